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


def test_a_multi_label_card_says_what_its_outputs_mean():
    from sentiment.config import load_config
    from sentiment.model_card import model_card

    cfg = load_config(None, ["model.problem_type=multi_label", "model.num_labels=3", "model.label_names=[plot, acting, music]",
                             "model.thresholds=[0.4, 0.55, 0.5]"])
    test = {"test_accuracy": 0.81, "test_micro_f1": 0.93, "test_f1": 0.91, "test_hamming_loss": 0.05, "test_count": 96,
            "test_epoch": 3}
    card = model_card(cfg, {"val_micro_f1": 0.9}, test, None)
    assert "multi-label text classification (`plot`, `acting`, `music`)" in card.text
    assert "`plot` 0.4, `acting` 0.55, `music` 0.5" in card.text and "multi_label_classification" in card.text
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == {"Subset accuracy": 0.81, "F1 (micro)": 0.93, "F1 (macro)": 0.91, "Hamming loss": 0.05}
