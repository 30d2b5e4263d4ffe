"""serve.schemas: the app's arguments and request bodies are validated with messages naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve.schemas import API_KEY_ENV, BatchConfig, ServeArgs, request_model


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


def test_the_key_is_never_an_argument_and_never_empty(tmp_path, monkeypatch):
    with pytest.raises(ValidationError, match="api_key is not an argument.*SENTIMENT_API_KEY.*api_key_file"):
        ServeArgs.model_validate({"checkpoint": "x", "api_key": "secret-123"})
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    args = ServeArgs(checkpoint="x")
    assert args.read_api_key(required=False) is None
    with pytest.raises(ValueError, match="requires an API key but .SENTIMENT_API_KEY is not set on this node"):
        args.read_api_key(required=True)
    monkeypatch.setenv(API_KEY_ENV, "  ")
    with pytest.raises(ValueError, match="is empty"):  # was: auth silently off while /healthz said it was on
        args.read_api_key(required=False)
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    assert ServeArgs(checkpoint="x", api_key_file=str(key_file)).read_api_key(True).get_secret_value() == "from-a-file"
    with pytest.raises(ValueError, match="cannot be read"):
        ServeArgs(checkpoint="x", api_key_file=str(tmp_path / "none")).read_api_key(True)


def test_credentials_in_a_checkpoint_uri_are_refused_without_echoing_them():
    with pytest.raises(ValidationError, match="checkpoint") as error:
        ServeArgs(checkpoint="s3://AKIAEXAMPLE:very-secret@bucket/model")
    assert "very-secret" not in str(error.value)


@pytest.mark.parametrize("config", [{"max_batch_size": 0, "max_batch_tokens": 4096, "batch_wait_timeout_s": 0.0},
                                    {"max_batch_size": 8, "max_batch_tokens": 0, "batch_wait_timeout_s": 0.0},
                                    {"max_batch_size": 8, "max_batch_tokens": None, "batch_wait_timeout_s": -1}])
def test_a_batch_config_that_would_spin_or_stall_the_batcher_is_refused(config):
    with pytest.raises(ValidationError):
        BatchConfig.model_validate(config)


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
