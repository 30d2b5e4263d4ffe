"""sentiment.model_card: the README.md of a model folder, read by huggingface_hub and transformers."""

from __future__ import annotations


def test_the_model_card_names_the_task_and_pipeline_loads_the_folder(model_dir):
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer, pipeline

    folder = model_dir / "epoch_001" / "model"
    card = ModelCard.load(folder / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-classification")
    assert card.data.base_model is None  # fine-tuned from a local folder: no Hub id to name
    assert card.data.datasets == ["stanfordnlp/imdb"] and card.data.labels == ["neg", "pos"]  # the config's data: the Hub's IMDB
    assert card.data.eval_results is None and "onnx" not in card.data.tags and "No test metrics yet" in card.text
    assert "| val_accuracy | 0.5000 |" in card.text and "`neg`, `pos`" in card.text
    assert AutoTokenizer.from_pretrained(folder).model_max_length == 64  # the training length, for truncation=True
    (scores,) = pipeline("text-classification", model=str(folder), top_k=None, truncation=True)(["A fun movie."])
    assert {s["label"] for s in scores} == {"neg", "pos"}
