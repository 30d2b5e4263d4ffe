"""serve.schemas: the app's arguments and request bodies are validated with messages naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve.schemas import ServeArgs, request_model


@pytest.mark.parametrize("bad, field", [
    ({"checkpont": "x"}, "checkpont"),
    ({"which": "first"}, "which"),
    ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
    ({"max_batch_size": 64, "max_ongoing_requests": 8}, "max_ongoing_requests"),
    ({"num_cpus": -1}, "num_cpus"),
])
def test_serve_args_name_the_bad_field(bad, field):
    with pytest.raises(ValidationError, match=field):
        ServeArgs.model_validate({"checkpoint": "x", **bad})


def test_cli_strings_are_converted_and_autoscaling_follows():
    args = ServeArgs.model_validate({"checkpoint": "x", "max_replicas": "4", "min_replicas": "0", "initial_replicas": "1"})
    scaling = args.autoscaling_config()
    assert (scaling.min_replicas, scaling.initial_replicas, scaling.max_replicas) == (0, 1, 4)


def test_request_model_takes_one_text_or_several_within_the_limits():
    Request = request_model(max_text_chars=10, max_texts=2, explain_max_texts=1)
    assert Request.model_validate({"text": "fine"}).all_texts() == ["fine"]
    assert Request.model_validate({"texts": ["a", "b"]}).all_texts() == ["a", "b"]
    assert Request.model_validate({"texts": ["a"], "explain": True}).explain
    for bad in ({"text": "x" * 11}, {"texts": ["a", "b", "c"]}, {"texts": []}, {}, {"text": 3}, {"text": "<br />"},
                {"texts": ["a", "b"], "explain": True}, {"text": "a", "explain": 1}):
        with pytest.raises(ValidationError):
            Request.model_validate(bad)
    with pytest.raises(ValidationError, match=r"explain is off on this deployment \(explain_max_texts=0\)"):
        request_model(max_text_chars=10, max_texts=2, explain_max_texts=0).model_validate({"text": "a", "explain": True})
