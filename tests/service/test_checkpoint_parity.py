"""Served answers equal the PyTorch checkpoint's on its saved test split, through the network,
while concurrent requests are batched together (a real exported tiny GRU, not a synthetic graph)."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from client.client import TextclfClient  # noqa: E402
from tests.support.metrics import metric, scrape  # noqa: E402
from tests.support.tiny_models import make_tiny_bundle  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.data import load_split  # noqa: E402


def test_served_probabilities_equal_checkpoint_under_concurrent_batching(repo_path, start_server) -> None:
    bundle_dir = make_tiny_bundle(repo_path, name="tiny", cell="gru", bidirectional=True)
    source = json.loads((bundle_dir / "model.json").read_text())["source"]
    checkpoint = load_checkpoint(source["checkpoint"])
    texts, _ = load_split(source["data_manifest"], "test")
    texts = texts + ["", "zzz unknown words only", "market " * 60]  # empty, all-[UNK], truncated
    with torch.no_grad():
        expected = []
        for text in texts:
            batch = checkpoint.encoder.encode_batch([text])
            logits = checkpoint.model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.lengths))
            expected.append(torch.softmax(logits, dim=-1)[0].numpy())
    expected = np.stack(expected)

    server = start_server(max_queue_delay_ms=10.0, max_batch_size=32)
    labels = checkpoint.labels
    requests = [i % len(texts) for i in range(len(texts) * 8)]
    with TextclfClient(server.address, retry=False) as client, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: client.classify([texts[i]], "tiny", top_k=len(labels)), requests))
    served = np.array([[dict(r.predictions[0].top)[label] for label in labels] for r in results], dtype=np.float32)
    np.testing.assert_allclose(served, expected[requests], atol=1e-5, rtol=0)
    assert [r.predictions[0].truncated for r in results[-1:]] == [True]

    samples = scrape(server.metrics_url)
    texts_computed = metric(samples, "textclf_batch_size_sum", model="tiny", version="1")
    batches = metric(samples, "textclf_batch_size_count", model="tiny", version="1")
    assert texts_computed == len(requests)
    assert batches < len(requests), "concurrent requests must have been batched together (batches > 1 text)"
