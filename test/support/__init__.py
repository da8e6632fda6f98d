"""Helpers the tests share: fixture writers for native scan layouts, the node harness, a local chat endpoint."""
