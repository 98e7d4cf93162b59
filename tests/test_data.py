"""Training data: index j of every result is dataset[j], and the user's loader is left as it was.

A collate_fn that drops, adds or reorders samples, a loader over ready-made batches and a stream
that can be read only once end in the right answer or a clear error; checking a custom sampler
never advances the generators it owns.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, Sampler, TensorDataset
from torch.utils.data.dataloader import default_collate

from captum_dualxda import DualDA
from captum_dualxda._core.data import as_dataloader
from captum_dualxda._core.store import extract_features
from captum_dualxda.metrics import training_loss


@pytest.fixture(scope="module")
def train_set(digits):
    x, y, _, _ = digits
    return TensorDataset(x[:200], y[:200])


def _same_fit(a, b):
    assert a.n_train == b.n_train
    assert torch.equal(a.train_labels, b.train_labels)
    assert torch.equal(a.support_indices, b.support_indices)
    assert torch.allclose(a.self_influence(), b.self_influence(), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------
# A collate_fn must turn every dataset item into one row, in order, with its label
# ------------------------------------------------------------------------------------------
class _Unreadable(Dataset):
    """``dataset[bad]`` is an unreadable file: None."""

    def __init__(self, data, bad):
        self.data, self.bad = data, bad

    def __len__(self):
        return len(self.data)

    def __getitem__(self, j):
        return None if j == self.bad else self.data[j]


def _skip_unreadable(items):
    return default_collate([s for s in items if s is not None])


def _by_brightness(items):
    return default_collate(sorted(items, key=lambda s: float(s[0].sum())))


def _by_label_then_brightness(items):
    return default_collate(sorted(items, key=lambda s: (int(s[1]), float(s[0].sum()))))


@pytest.mark.parametrize("setting", ["in memory", "workers", "memory-mapped"])
def test_a_collate_fn_that_skips_unreadable_samples_is_refused(setting, train_set, digits_cnn, tmp_path):
    loader = DataLoader(
        _Unreadable(train_set, 40),
        batch_size=32,
        collate_fn=_skip_unreadable,
        num_workers=2 if setting == "workers" else 0,
    )
    kwargs = dict(cache_dir=str(tmp_path), memory_budget=0) if setting == "memory-mapped" else {}
    with pytest.raises(ValueError, match="made a batch of 31 samples from 32 dataset items") as info:
        DualDA(digits_cnn, "fc", loader, C=0.01, **kwargs)
    assert "collate_fn of `train_dataset`" in str(info.value) and "Subset" in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing cached, no scratch file left


def test_every_reader_of_training_data_refuses_a_collate_fn_that_skips_samples(train_set, digits_cnn):
    with pytest.raises(ValueError, match="collate_fn of `data` made a batch of 31 samples"):
        training_loss(digits_cnn, DataLoader(_Unreadable(train_set, 3), batch_size=32, collate_fn=_skip_unreadable))


def _twice(items):  # every sample twice, e.g. two augmented views
    return default_collate(list(items) + list(items))


def test_a_collate_fn_that_adds_samples_is_refused(train_set):
    with pytest.raises(ValueError, match="made a batch of 64 samples from 32 dataset items: it adds samples"):
        next(iter(as_dataloader(DataLoader(train_set, batch_size=32, collate_fn=_twice), 8)))


@pytest.mark.parametrize("collate, found", [(_skip_unreadable, "yields 199"), (_twice, "yields at least 300")])
def test_extraction_refuses_a_loader_that_yields_another_number_of_samples_than_its_dataset(
    collate, found, train_set, digits_cnn
):
    dataset = _Unreadable(train_set, 150) if collate is _skip_unreadable else train_set
    loader = DataLoader(dataset, batch_size=50, collate_fn=collate)  # not through as_dataloader: unchecked batches
    with pytest.raises(ValueError, match=found + " samples but its dataset has 200 items"):
        extract_features(digits_cnn, digits_cnn.fc, loader)


def test_a_collate_fn_that_sorts_a_batch_is_refused(train_set, digits_cnn):
    with pytest.raises(ValueError, match="reorders samples") as info:
        DualDA(digits_cnn, "fc", DataLoader(train_set, batch_size=32, collate_fn=_by_brightness), C=0.01)
    assert "returned the label" in str(info.value)  # the labels alone show it here


def test_a_sort_that_only_swaps_samples_with_equal_labels_is_refused_by_their_inputs(train_set, digits_cnn):
    x, y = train_set.tensors
    order = torch.argsort(y, stable=True)
    by_class = TensorDataset(x[order], y[order])  # stored class by class: the labels stay in order
    with pytest.raises(ValueError, match=r"row \d+ of a batch holds the model input \(element 0\) of its item \d+"):
        DualDA(digits_cnn, "fc", DataLoader(by_class, batch_size=32, collate_fn=_by_label_then_brightness), C=0.01)


def _token_items(n=12):
    """Hugging Face style items: token ids of different lengths, all with the same label."""
    return [{"input_ids": list(range(1 + j, 4 + j + j % 5)), "label": 1} for j in range(n)]


def _padding_collate(side, sort):
    def collate(items):
        if sort:  # longest first, as a packing collate_fn does
            items = sorted(items, key=lambda item: -len(item["input_ids"]))
        width = max(len(item["input_ids"]) for item in items)
        ids = torch.zeros(len(items), width, dtype=torch.long)
        mask = torch.zeros(len(items), width, dtype=torch.long)
        for i, item in enumerate(items):
            n = len(item["input_ids"])
            where = slice(0, n) if side == "right" else slice(width - n, width)
            ids[i, where], mask[i, where] = torch.tensor(item["input_ids"]), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([item["label"] for item in items])}

    return collate


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_padding_collate_fn_that_sorts_by_length_is_refused_by_the_token_ids(side):
    sorting = as_dataloader(DataLoader(_token_items(), batch_size=6, collate_fn=_padding_collate(side, sort=True)), 6)
    with pytest.raises(ValueError, match="reorders samples"):
        list(sorting)
    in_order = as_dataloader(DataLoader(_token_items(), batch_size=6, collate_fn=_padding_collate(side, sort=False)), 6)
    assert [b["input_ids"].shape[0] for b in in_order] == [6, 6]


def _reversed(items):
    items = items[::-1]
    if isinstance(items[0], dict):  # Hugging Face style: "label" in the items, "labels" in the batch
        return {"x": torch.stack([i["x"] for i in items]), "labels": torch.tensor([int(i["label"]) for i in items])}
    return default_collate(items)


def _times_two(items):  # changes every input, keeps the order
    batch = _reversed(items[::-1])
    if isinstance(batch, dict):
        return {**batch, "x": batch["x"] * 2}
    return [batch[0] * 2, batch[1]]


@pytest.mark.parametrize("label", [int, np.int64, torch.tensor, "dict"])
def test_labels_of_every_type_are_compared_in_order(label):
    def item(j):
        x = torch.full((2, 3), float(j))
        return {"x": x, "label": j % 3} if label == "dict" else (x, label(j % 3))

    items = [item(j) for j in range(10)]
    with pytest.raises(ValueError, match="reorders samples"):
        list(as_dataloader(DataLoader(items, batch_size=5, collate_fn=_reversed), 5))
    assert len(list(as_dataloader(DataLoader(items, batch_size=5, collate_fn=_times_two), 5))) == 2


def test_train_inputs_are_the_dataset_items_through_the_checked_collate_fn(train_set, digits_cnn):
    dualda = DualDA(digits_cnn, "fc", DataLoader(train_set, batch_size=32, shuffle=True), C=0.01)
    assert torch.equal(dualda.train_inputs([7, 3, 150])[0], train_set.tensors[0][[7, 3, 150]])


# ------------------------------------------------------------------------------------------
# Loaders that are not one sample per dataset item
# ------------------------------------------------------------------------------------------
def test_a_loader_over_ready_made_batches_is_refused_saying_what_it_holds(train_set, digits_cnn, monkeypatch):
    import captum_dualxda._core.store as store_module

    monkeypatch.setattr(store_module, "extract_features", lambda *a, **k: pytest.fail("extracted: batch_size=None"))
    x, y = train_set.tensors
    batches = [(x[i : i + 20], y[i : i + 20]) for i in range(0, 200, 20)]
    with pytest.raises(ValueError, match=r"batch_size=None.*item 0 holds 20 samples") as info:
        DualDA(digits_cnn, "fc", DataLoader(batches, batch_size=None), C=0.01)
    assert "`train_dataset`" in str(info.value) and "dataset[j]" in str(info.value)


def test_a_batch_sampler_that_yields_index_tensors_is_read_in_dataset_order(train_set):
    batches = list(torch.randperm(200, generator=torch.Generator().manual_seed(2)).split(32))
    loader = as_dataloader(DataLoader(train_set, batch_sampler=batches), 8)
    assert torch.equal(torch.cat([b[0] for b in loader]), train_set.tensors[0])


# ------------------------------------------------------------------------------------------
# A custom sampler is checked without advancing what it owns
# ------------------------------------------------------------------------------------------
class _TorchGenerator(Sampler):
    def __init__(self, n, seed):
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self):
        return self.n


class _NumpyGenerator(_TorchGenerator):
    def __init__(self, n, seed):
        self.n, self.rng = n, np.random.default_rng(seed)

    def __iter__(self):
        return iter(self.rng.permutation(self.n).tolist())


class _ShuffledInPlace(_TorchGenerator):
    def __init__(self, n, seed):
        self.n, self.rng, self.order = n, random.Random(seed), list(range(n))

    def __iter__(self):
        self.rng.shuffle(self.order)  # the next epoch shuffles this epoch's order
        return iter(list(self.order))


class _EpochSeeded(_TorchGenerator):
    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def __iter__(self):
        self.epoch += 1
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())


class _Slotted(Sampler):
    __slots__ = ("n", "generator")

    def __init__(self, n, seed):
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self):
        return self.n


class _Batches(Sampler):
    """A custom batch sampler over a custom sampler."""

    def __init__(self, sampler, size):
        self.sampler, self.size = sampler, size

    def __iter__(self):
        order = list(self.sampler)
        return iter([order[i : i + self.size] for i in range(0, len(order), self.size)])

    def __len__(self):
        return -(-len(self.sampler) // self.size)


@pytest.mark.parametrize("kind", [_TorchGenerator, _NumpyGenerator, _ShuffledInPlace, _EpochSeeded, _Slotted])
@pytest.mark.parametrize("how", ["sampler", "BatchSampler", "custom batch_sampler"])
def test_checking_a_custom_sampler_leaves_its_next_epoch_as_it_was(kind, how, train_set):
    used, untouched = kind(200, 7), kind(200, 7)
    if how == "sampler":
        loader = DataLoader(train_set, batch_size=32, sampler=used)
    else:
        batches = BatchSampler(used, 32, drop_last=False) if how == "BatchSampler" else _Batches(used, 32)
        loader = DataLoader(train_set, batch_sampler=batches)
    as_dataloader(loader, 8)
    assert list(used) == list(untouched)  # the user's next epoch draws the order it would have drawn
    assert list(used) == list(untouched)


@pytest.mark.parametrize("how", ["custom sampler", "shuffle with a generator"])
def test_a_fit_leaves_the_users_sampler_generator_as_it_was(how, train_set, digits_cnn):
    used, untouched = _TorchGenerator(200, 11), _TorchGenerator(200, 11)
    if how == "custom sampler":
        loader = DataLoader(train_set, batch_size=32, sampler=used)
    else:
        loader = DataLoader(train_set, batch_size=32, shuffle=True, generator=used.generator)
    DualDA(digits_cnn, "fc", loader, C=0.01)
    assert torch.equal(used.generator.get_state(), untouched.generator.get_state())


# ------------------------------------------------------------------------------------------
# A stream that can be read only once
# ------------------------------------------------------------------------------------------
class _ReadOnce(IterableDataset):
    """A stream: every ``__iter__`` continues the same iterator (a generator, a network stream)."""

    def __init__(self, x, y):
        self.items, self.reads = iter(list(zip(x, y))), 0

    def __iter__(self):
        self.reads += 1
        return self.items


def test_a_read_once_stream_with_a_cache_is_read_once_and_gives_the_plain_fit(tmp_path, train_set, digits_cnn):
    x, y = train_set.tensors
    reference = DualDA(digits_cnn, "fc", train_set, C=0.01, batch_size=32)
    stream = _ReadOnce(x, y)
    first = DualDA(digits_cnn, "fc", stream, C=0.01, batch_size=32, cache_dir=str(tmp_path))
    assert stream.reads == 1 and not first.fit_stats["from_cache"]
    _same_fit(first, reference)
    again = DualDA(digits_cnn, "fc", _ReadOnce(x, y), C=0.01, batch_size=32, cache_dir=str(tmp_path))
    assert again.fit_stats["from_cache"]
    assert torch.equal(again.self_influence(), first.self_influence())
    other = DualDA(digits_cnn, "fc", _ReadOnce(x.flip(0), y.flip(0)), C=0.01, batch_size=32, cache_dir=str(tmp_path))
    assert not other.fit_stats["from_cache"]  # other data: another key


def test_a_used_up_stream_says_what_a_one_pass_stream_cannot_do(train_set, digits_cnn):
    x, y = train_set.tensors
    stream = _ReadOnce(x, y)
    dualda = DualDA(digits_cnn, "fc", stream, C=0.01, batch_size=32)
    with pytest.raises(ValueError, match="yielded no samples.*read only once"):
        DualDA(digits_cnn, "fc", stream, C=0.01, batch_size=32)
    with pytest.raises(ValueError, match="IterableDataset.*cannot be read by index"):
        dualda.train_inputs([0])


# ------------------------------------------------------------------------------------------
# A TensorDataset read in order is fetched a whole batch at a time, with the same batches
# ------------------------------------------------------------------------------------------
class _ItemByItem(TensorDataset):
    """A TensorDataset read through its own ``__getitem__``: the DataLoader's item-by-item path."""

    def __getitem__(self, j):
        return super().__getitem__(j)


class _Doubled(TensorDataset):
    """An augmenting dataset: every item's image doubled."""

    def __getitem__(self, j):
        x, y = super().__getitem__(j)
        return 2 * x, y


class _Batched(TensorDataset):
    """Fetches its batches itself (``__getitems__``, which torch's DataLoader calls), the last row negated."""

    def __getitems__(self, indices):
        items = [super(_Batched, self).__getitem__(j) for j in indices]
        return items[:-1] + [(-items[-1][0], items[-1][1])]


def _counting(monkeypatch):
    """Count the calls of ``TensorDataset.__getitem__`` and of the collate check."""
    import captum_dualxda._core.data as data_module

    calls = {"items": 0, "checks": 0}
    getitem, check = TensorDataset.__getitem__, data_module.check_batch

    def counted_getitem(self, j):
        calls["items"] += 1
        return getitem(self, j)

    def counted_check(*args, **kwargs):
        calls["checks"] += 1
        return check(*args, **kwargs)

    monkeypatch.setattr(TensorDataset, "__getitem__", counted_getitem)
    monkeypatch.setattr(data_module, "check_batch", counted_check)
    return calls


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_tensor_dataset_is_fetched_whole_batches_at_a_time_with_the_features_of_the_item_by_item_path(
    shuffle, train_set, digits_cnn, monkeypatch
):
    x, y = train_set.tensors
    reference = DualDA(digits_cnn, "fc", DataLoader(_ItemByItem(x, y), batch_size=48), C=0.01)
    slow, _ = extract_features(digits_cnn, digits_cnn.fc, as_dataloader(DataLoader(_ItemByItem(x, y), 48), 8))
    calls = _counting(monkeypatch)
    loader = DataLoader(train_set, batch_size=48, shuffle=shuffle)  # 200 = 4 x 48 + 8: a short last batch
    fast, labels = extract_features(digits_cnn, digits_cnn.fc, as_dataloader(loader, 8))
    dualda = DualDA(digits_cnn, "fc", loader, C=0.01)
    assert calls == {"items": 0, "checks": 0}  # no item read alone, nothing left to check
    assert torch.equal(fast, slow) and torch.equal(labels, y)  # bitwise the DataLoader's batches' features
    _same_fit(dualda, reference)
    assert torch.equal(dualda.self_influence(), reference.self_influence())
    assert dualda.train_dataloader.dataset is train_set and loader.dataset is train_set


def test_the_batches_fetched_whole_are_the_dataloaders_own(train_set):
    from captum_dualxda._core.data import loader_batches

    x, y = train_set.tensors
    wide = TensorDataset(x.double().transpose(2, 3), y.int(), torch.arange(200.0)[:, None].expand(200, 3))
    for dataset in (train_set, wide):
        loader = as_dataloader(DataLoader(dataset, batch_size=64), 8)
        expected, got = list(loader), list(loader_batches(loader))
        assert len(got) == len(expected) == 4
        for batch, reference in zip(got, expected):
            assert type(batch) is type(reference) is list
            for tensor, other in zip(batch, reference):
                assert torch.equal(tensor, other) and tensor.dtype == other.dtype and tensor.stride() == other.stride()
        assert all(tensor.data_ptr() != source.data_ptr() for tensor, source in zip(got[0], dataset.tensors))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda x, y: _Doubled(x, y), lambda x: 2 * x),
        (lambda x, y: _Batched(x, y), lambda x: torch.cat([x[:-1], -x[-1:]])),
    ],
    ids=["augmenting __getitem__", "own __getitems__"],
)
def test_a_dataset_that_makes_its_own_items_is_not_sliced(make, expected, train_set, digits_cnn):
    x, y = train_set.tensors
    x, y = x[:50], y[:50]
    features, _ = extract_features(digits_cnn, digits_cnn.fc, as_dataloader(DataLoader(make(x, y), 50), 8))
    reference, _ = extract_features(digits_cnn, digits_cnn.fc, DataLoader(TensorDataset(expected(x), y), 50))
    assert torch.equal(features, reference)


class _InPlace(torch.nn.Module):
    """A model that normalises its input in place."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.sub_(0.5))


def test_a_model_that_changes_its_input_in_place_leaves_the_dataset_alone(train_set, digits_cnn):
    x, y = train_set.tensors
    dataset = TensorDataset(x.clone(), y.clone())
    DualDA(_InPlace(digits_cnn), "net.fc", DataLoader(dataset, batch_size=64), C=0.01)
    assert torch.equal(dataset.tensors[0], x) and torch.equal(dataset.tensors[1], y)


def test_a_fit_on_a_tensor_dataset_draws_from_no_random_generator(train_set, digits_cnn, tmp_path):
    state = torch.get_rng_state()
    DualDA(digits_cnn, "fc", DataLoader(train_set, batch_size=64, shuffle=True), C=0.01, cache_dir=str(tmp_path))
    assert torch.equal(torch.get_rng_state(), state)  # a DataLoader's iterator draws a base seed from it


def test_the_cache_key_of_a_tensor_dataset_is_that_of_its_dataloader_batches(train_set, digits_cnn):
    from captum_dualxda._core.cache import Fingerprint
    from captum_dualxda._core.state import fit_fingerprint
    from captum_dualxda.solver.settings import SolverSettings

    loader = as_dataloader(DataLoader(train_set, batch_size=64), 8)
    settings = SolverSettings(C=0.01)
    key = fit_fingerprint(digits_cnn, "fc", loader, settings)
    reference = fit_fingerprint(digits_cnn, "fc", list(loader), settings)  # the DataLoader's own batches
    assert key == reference
    assert Fingerprint().update_batches(loader).hexdigest() == Fingerprint().update_batches(list(loader)).hexdigest()


def test_test_inputs_and_the_training_loss_read_a_tensor_dataset_whole_batches_at_a_time(
    train_set, digits_cnn, monkeypatch
):
    x, y = train_set.tensors
    dualda = DualDA(digits_cnn, "fc", train_set, C=0.01, batch_size=64)
    items = DataLoader(_ItemByItem(x[:70], y[:70]), batch_size=32)  # the same batches, read item by item
    scores, top = dualda.influence(items), dualda.influence(items, k=5, proponents=False)
    loss = training_loss(digits_cnn, DataLoader(_ItemByItem(x, y), batch_size=48))
    calls = _counting(monkeypatch)
    loader = DataLoader(TensorDataset(x[:70], y[:70]), batch_size=32)
    assert torch.equal(dualda.influence(loader), scores)
    again = dualda.influence(loader, k=5, proponents=False)
    assert torch.equal(again.indices, top.indices) and torch.equal(again.influence_scores, top.influence_scores)
    assert torch.equal(training_loss(digits_cnn, DataLoader(train_set, batch_size=48)), loss)
    assert calls == {"items": 0, "checks": 0}
