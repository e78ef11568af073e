"""The tokenization benchmark (bench/bench_tokenize.py) runs end to end, puts the texts (ASCII, Latin,
Cyrillic, Greek, typographic punctuation) on the fast path and finds the same ids as tokenizers."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from tests.support.onnx_bundle import make_onnx_bundle

ROOT = Path(__file__).resolve().parents[2]
WORDS = "the bank market rates striker team phone chip final shares rose fell goal scored software".split()


def test_bench_tokenize_reports_both_ways_with_the_same_ids(tmp_path: Path) -> None:
    make_onnx_bundle(tmp_path / "models", name="news", version=1, max_len=512)
    rng = random.Random(0)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": "Costs £5m, café — „Börse“ «рынок» αγορά €5. " + " ".join(rng.choice(WORDS) for _ in range(400))}) + "\n"
                             for _ in range(10)), encoding="utf-8")
    output = tmp_path / "tokenize.json"
    run = subprocess.run([sys.executable, "bench/bench_tokenize.py", "--repository", str(tmp_path / "models"),
                          "--texts-jsonl", str(texts), "--num-texts", "8", "--calls", "50", "--output", str(output)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(output.read_text())
    cells = report["cells"]
    assert [c["length"] for c in cells] == ["short", "long"]
    for cell in cells:
        assert cell["differing_ids"] == 0 and cell["fast_path_texts"] == cell["texts"] == 8
        assert cell["fast_path_us"] > 0 and cell["tokenizers_us"] > 0 and cell["encode_us"] > 0
    assert report["corpus_check"] == {"texts": 10, "prefixes": 30, "fast_path": 30, "differing_ids": 0}
    assert report["fast_path_characters"]["taken"] > 1000 and report["fast_path_characters"]["replaced"] > 50
    hostile = report["hostile"]
    assert {(c["unit"], c["texts"], c["chars"]) for c in hostile} == {
        (unit, texts, chars) for unit in ("nfkc-18x", "dots", "ellipsis", "a-space", "no-space")
        for texts, chars in ((1, 2048), (64, 3072), (64, 65536))}
    assert all(c["encode_ms"] > 0 for c in hostile)


def test_the_multilingual_texts_are_what_their_script_writes() -> None:
    """bench/data/multilingual.jsonl is committed with the script that writes it: the two agree."""
    sys.path.insert(0, str(ROOT / "bench" / "data"))
    try:
        import make_multilingual
    finally:
        sys.path.remove(str(ROOT / "bench" / "data"))
    assert make_multilingual.OUTPUT.read_text(encoding="utf-8") == make_multilingual.jsonl()
