"""`matcli eval --draft`: transformers' assisted generation with a slice or a submodel as the
draft: identical greedy outputs, acceptance counted from forward passes, consistency, refusals."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import assert_refused, run_matcli

from matcli.evaluate import load_model, load_view, perplexity
from matcli.speculative import assisted_generation, consistency, share_weights

SMALL = ["--prompts", "2", "--prompt-tokens", "16", "--new-tokens", "8", "--seq-len", "32"]


def _prompts(count: int = 2, length: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(4, 98, (1, length), generator=g) for _ in range(count)]


def _draft_eval(target, text_file, *args: str) -> dict:
    code, out, err = run_matcli(
        "eval", str(target), "--data", str(text_file), *SMALL, "--json", *args
    )
    assert code == 0, err
    return json.loads(out)


def test_a_draft_equal_to_the_target_has_every_token_accepted(llama):
    target, draft = load_model(llama), load_model(llama)
    report = assisted_generation(target, draft, _prompts(), new_tokens=8)
    assert report["identical_outputs"] == 2
    assert report["accepted"] == report["proposed"] > 0
    assert report["acceptance_rate"] == 1.0
    # every target step adds its accepted draft tokens plus one of its own
    assert report["generated_tokens"] == report["accepted"] + report["target_steps"]


def test_same_model_consistency_is_one_and_perplexities_are_evals(llama, text_file):
    from transformers import AutoTokenizer

    from matcli.data import read_texts, token_windows

    windows = token_windows(AutoTokenizer.from_pretrained(llama), read_texts(text_file), 32, 256)
    target, draft = load_model(llama), load_model(llama)
    agreement = consistency(target, draft, windows, batch_size=3)
    assert agreement["consistency"] == 1.0
    assert agreement["positions"] == windows[:, 1:].numel()
    expected = perplexity(target, windows, batch_size=4)
    assert all(math.isclose(p, expected, rel_tol=1e-4) for p in agreement["perplexity"])


def test_submodel_draft_is_views_of_the_target_and_accepts_less(llama, text_file):
    report = _draft_eval(llama, text_file, "--draft", str(llama), "--draft-ffn-config", "0.5")
    spec = report["speculative"]
    assert spec["identical_outputs"] == 2  # greedy verification keeps the target's outputs
    assert spec["acceptance_rate"] < 1.0
    assert spec["generated_tokens"] == spec["accepted"] + spec["target_steps"]
    assert report["consistency"]["consistency"] < 1.0
    target, draft = report["results"]
    assert draft["parameters"] < target["parameters"]
    # the submodel's FFN is the prefix of the full one: the draft adds no weights of its own
    memory = report["memory"]
    assert memory["shared_bytes"] == memory["draft_bytes"] < memory["target_bytes"]


def test_share_weights_shares_prefixes_and_keeps_outputs(llama):
    target = load_model(llama)
    draft = load_view(llama, ffn_config="0.5")
    tokens = _prompts(1, 24)[0]
    with torch.no_grad():
        before = draft(tokens).logits
        share_weights(draft, target)
        after = draft(tokens).logits
    assert torch.equal(before, after)
    down = draft.model.layers[0].mlp.down_proj.weight
    assert down.data_ptr() == target.model.layers[0].mlp.down_proj.weight.data_ptr()


def test_low_bit_slice_drafts_its_own_parent(llama_parent, text_file):
    report = _draft_eval(
        llama_parent, text_file, "--bits", "8", "--draft", str(llama_parent), "--draft-bits", "2"
    )
    spec = report["speculative"]
    assert spec["identical_outputs"] == 2
    assert 0 <= spec["acceptance_rate"] <= 1
    assert [r["bits"] for r in report["results"]] == [8, 2]
    assert 0 < report["memory"]["shared_bytes"] < report["memory"]["draft_bytes"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--draft", "{model}"], "not smaller than the target"),
        (["--draft-bits", "4"], "--draft-bits apply to --draft DRAFT"),
        (["--prompts", "3"], "--prompts apply to --draft DRAFT"),
        (["--draft", "{model}", "--bits", "8,4"], "give one --bits width"),
        (["--draft", "{model}", "--plot", "x.png"], "drop it with --draft"),
        (["--draft", "{model}", "--draft-bits", "4", "--draft-ffn-config", "0.5"], "combined"),
        (["--draft", "{model}", "--draft-skip-layers", "1"], "needs --draft-ffn-config"),
        (["--draft", "{model}", "--draft-bits", "2"], "needs a quantized parent"),
    ],
)
def test_draft_refusals(llama, text_file, tmp_path, args, match):
    args = [a.replace("{model}", str(llama)) for a in args]
    small = SMALL if "--draft" in args else []  # --prompts etc. alone are refused
    command = ["eval", str(llama), "--data", str(text_file), *small, *args]
    assert_refused(command, tmp_path / "nothing", match, inputs=[llama])


def test_draft_with_another_vocabulary_is_refused(llama, text_file, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(llama, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    command = ["eval", str(llama), "--data", str(text_file), *SMALL, "--draft", str(other)]
    assert_refused(command, tmp_path / "nothing", "tokenizer differs", inputs=[llama, other])
