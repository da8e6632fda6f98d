"""Procedural synthetic rooms: generation, RGB-D rendering, annotations, writers."""
