"""SceneDPO hard negatives (§4.4): rule-based rephrasing of correct short answers, an
OpenAI-compatible endpoint (a real HTTP server on 127.0.0.1), and the pairs they make
(mining with a real model runs in test_training_runs.py)."""
from __future__ import annotations

import pytest
from support.chat_server import chat_server

from leovl_ros.training.chat_endpoint import ChatClient, ChatError
from leovl_ros.training.metrics import answer_match, clean_answer
from leovl_ros.training.records import Record
from leovl_ros.training.rephrase import DEFAULT_PROMPT, EndpointRephraser, RuleRephraser, SceneVocabulary, is_wrong
from leovl_ros.training.scene_dpo import negative_pairs


def _rec(scene: str, question: str, answer: str, answers: list[str] | None = None) -> Record:
    return Record(scene_id=scene, task="qa", instruction=question, response=answer, answers=answers, source="t")


# The scene's annotations: what colours and objects it mentions.
SCENE = [_rec("s1", "What colour is the sofa next to the coffee table?", "brown"),
         _rec("s1", "Is the red chair left of the lamp?", "yes"),
         _rec("s1", "What is on the desk?", "a white laptop")]
OTHER = [_rec("s2", "What colour is the bed?", "purple")]


@pytest.fixture(scope="module")
def rules() -> RuleRephraser:
    return RuleRephraser(SceneVocabulary.from_records(SCENE + OTHER), seed=0)


def test_scene_vocabulary_holds_the_colours_and_objects_each_scene_mentions():
    vocab = SceneVocabulary.from_records(SCENE + OTHER)
    assert vocab.colours["s1"] == {"brown", "red", "white"} and vocab.colours["s2"] == {"purple"}
    assert {"sofa", "coffee table", "table", "chair", "lamp", "desk", "laptop"} <= vocab.objects["s1"]
    assert "bed" in vocab.objects["s2"] and "bed" not in vocab.objects["s1"]


@pytest.mark.parametrize("answer, allowed", [
    ("yes", {"no"}), ("No", {"yes"}),
    ("3", {"1", "2", "4", "5"}), ("two", {"zero", "one", "three", "four"}), ("0", {"1", "2"}),  # never below 0
    ("left", {"right"}), ("on the right", {"on the left"}), ("above", {"below"}), ("behind", {"front"}),
    ("brown", {"red", "white"}),  # another colour of this scene, never purple (scene s2's)
    ("a red chair", {"a brown chair", "a white chair"}),  # colour first: one minimal edit
    ("lamp", {"sofa", "coffee table", "table", "chair", "desk", "laptop"}),
    ("coffee table", {"sofa", "chair", "lamp", "desk", "laptop"}),  # the longest name is the one swapped
])
def test_rules_make_one_plausible_wrong_edit(rules, answer, allowed):
    record = _rec("s1", "q?", answer)
    negative = rules.rephrase(record, answer, index=3)
    assert negative in allowed, negative
    assert answer_match(clean_answer(negative), [clean_answer(answer)]) == (0, 0)  # really wrong
    assert rules.rephrase(record, answer, index=3) == negative  # seeded: the same pair, the same edit


def test_rules_leave_free_form_and_unknown_answers_and_never_give_an_accepted_one(rules):
    long = "the sofa is brown and stands by the window"
    assert rules.rephrase(_rec("s1", "q?", long), long) is None  # more than max_rule_words: the endpoint's job
    assert rules.rephrase(_rec("s1", "q?", "kitchen"), "kitchen") is None  # nothing to edit
    assert rules.rephrase(_rec("s2", "q?", "purple"), "purple") is None  # no other colour in that scene
    # every edit of "3" would be an accepted answer or contain one: no negative
    three = _rec("s1", "How many?", "3", answers=["1", "2", "3", "4", "5"])
    assert rules.rephrase(three, "3") is None
    grey = _rec("s1", "q?", "gray")  # a synonym is not a wrong answer
    vocab = SceneVocabulary.from_records([_rec("s1", "a grey and a gray box", "grey")])
    assert RuleRephraser(vocab).rephrase(grey, "gray") is None


@pytest.mark.parametrize("answer, reference", [
    ("sofa", "couch"), ("carpet", "rug"), ("bin", "trash can"), ("picture", "painting"), ("tv", "television"),
    ("grey", "gray"), ("a brown couch", "brown sofa"), ("golden", "gold"), ("fridge", "refrigerator")])
def test_a_synonym_of_a_reference_is_never_a_negative(answer, reference):
    assert not is_wrong(answer, [reference]) and not is_wrong(reference, [answer])
    assert is_wrong("chair", [reference])
    # the model's synonym of the right answer is not a "wrong" pair, and the rules never give one
    record = _rec("s1", "q?", reference, [reference])
    vocab = SceneVocabulary.from_records([_rec("s1", f"the {reference} and the {answer}", reference)])
    assert RuleRephraser(vocab).rephrase(record, reference) is None
    _, kinds, counts = negative_pairs([record], [answer])
    assert kinds == [] and counts["correct_not_rephrased"] == 1


def test_shades_and_materials_are_not_colours_and_light_is_an_object():
    scene = [_rec("s3", "Is the light by the grey couch or the sofa? A wooden desk, a dark rug, a carpet, a lamp.",
                  "the light")]
    vocab = SceneVocabulary.from_records(scene)
    assert vocab.colours["s3"] == {"grey"}  # not light, dark or wooden
    rules = RuleRephraser(vocab)
    # "light brown": the colour is swapped, the shade kept (never "lamp brown"); with no other colour, nothing
    assert rules.rephrase(_rec("s3", "q?", "light brown"), "light brown") == "light grey"
    assert rules.rephrase(_rec("s3", "q?", "dark grey"), "dark grey") is None
    assert "light" not in SceneVocabulary.from_records([_rec("s4", "Is the light brown desk tidy?", "yes")]).objects["s4"]
    # the object "light" becomes another object, never a colour, a lamp (its synonym) or its own synonym
    negatives = {rules.rephrase(_rec("s3", "q?", "light"), "light", index=i) for i in range(20)}
    assert negatives and negatives <= {"couch", "sofa", "desk", "rug", "carpet"}
    negatives = {rules.rephrase(_rec("s3", "q?", "couch"), "couch", index=i) for i in range(20)}
    assert negatives and negatives <= {"light", "lamp", "desk", "rug", "carpet"}  # never sofa
    assert {rules.rephrase(_rec("s3", "q?", "rug"), "rug", index=i) for i in range(20)} <= {
        "light", "lamp", "desk", "couch", "sofa"}  # never carpet


def test_endpoint_rephraser_over_real_http():
    def reply(messages: list[dict]) -> str:
        text = messages[-1]["content"]
        return '"a green lamp"' if "Correct answer: a red chair" in text else "a red chair"  # 2nd: the right one

    record = _rec("s1", "What is left of the sofa?", "a red chair")
    with chat_server(reply) as server:
        client = ChatClient(server.url, "rephraser", api_key_env="LEOVL_TEST_KEY")
        rephraser = EndpointRephraser(client)
        assert rephraser.rephrase(record, "a red chair") == "a green lamp"  # quotes stripped
        assert rephraser.rephrase(_rec("s1", "q?", "a red chair", ["a red chair"]), "red chair!") is None
        sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["model"] == "rephraser"
    assert sent["messages"][0]["content"] == DEFAULT_PROMPT.format(question="What is left of the sofa?",
                                                                    answer="a red chair", situation="")
    with pytest.raises(ValueError, match="answer"):
        EndpointRephraser(client, prompt="no placeholder")
    with chat_server(reply, status=400) as server:  # a refused request is a clear error, not retried
        with pytest.raises(ChatError, match="HTTP 400"):
            EndpointRephraser(ChatClient(server.url, "m", api_key_env="")).rephrase(record, "a red chair")


def test_pairs_keep_wrong_answers_and_rephrase_correct_ones(monkeypatch):
    """The model's answers (here given) to four questions: those a record accepts are
    "correct" and get a rephrased negative (rules where they apply, else the endpoint); a
    wrong one is the negative itself; an empty one gives no pair."""
    answers = {"What is by the sofa?": "red chair", "How many lamps?": "2", "Which room is this?": "kitchen"}
    records = [_rec("s1", q, a, [a]) for q, a in answers.items()]
    records += [_rec("s1", "What colour is the bed?", "green", ["green"]), _rec("s1", "Is it on?", "yes", ["yes"])]
    predictions = ["Red chair.", "2", "kitchen", "blue", " "]
    vocab = SceneVocabulary.from_records(records + [_rec("s1", "Is the white sofa by the window?", "yes")])
    monkeypatch.setenv("LEOVL_TEST_KEY", "sk-test")
    with chat_server(lambda messages: "a purple elephant") as server:
        endpoint = EndpointRephraser(ChatClient(server.url, "m", api_key_env="LEOVL_TEST_KEY"))
        rephrasers = [("rephrased_rules", RuleRephraser(vocab)), ("rephrased_endpoint", endpoint)]
        out, kinds, counts = negative_pairs(records, predictions, rephrasers)
        asked = [r["messages"][0]["content"] for r in server.requests]
        auth = {r["auth"] for r in server.requests}
    rejected = [r.rejected for r in out]
    assert rejected[0] in {"white chair", "green chair"} and rejected[1] in {"0", "1", "3", "4"}  # one edit each
    assert rejected[2:] == ["a purple elephant", "blue"]  # the endpoint for "kitchen"; a wrong answer as is
    assert [r.response for r in out] == ["red chair", "2", "kitchen", "green"]  # the chosen answer is the record's
    assert kinds == ["rephrased_rules", "rephrased_rules", "rephrased_endpoint", "wrong"]
    assert counts == {"wrong": 1, "correct_not_rephrased": 0, "empty": 1, "rephrased_rules": 2,
                      "rephrased_endpoint": 1}
    assert len(asked) == 1 and "Correct answer: kitchen" in asked[0]  # only what the rules could not edit
    assert auth == {"Bearer sk-test"}  # the key comes from the environment variable
    # without rephrasers a correct answer gives no pair
    _, kinds, counts = negative_pairs(records, predictions)
    assert kinds == ["wrong"] and counts["correct_not_rephrased"] == 3
