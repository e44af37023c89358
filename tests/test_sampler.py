"""gf.data.DistributedSampler and DataLoader(sampler=...): no MPI needed (explicit ranks)."""

import math

import numpy as np
import pytest

import gradfuse as gf
from gradfuse.data import DataLoader, DistributedSampler, TensorDataset


def _ds(n):
    return TensorDataset(np.arange(n, dtype=np.float32).reshape(n, 1), np.arange(n))


def _ref_shard(order, n, w, r, drop_last):
    """PyTorch's DistributedSampler.__iter__ given the epoch's order (a numpy reference)."""
    order = list(order)
    if drop_last and n % w:
        num = math.ceil((n - w) / w)
    else:
        num = math.ceil(n / w)
    total = num * w
    if not drop_last:
        pad = total - len(order)
        if pad <= len(order):
            order += order[:pad]
        else:
            order += (order * math.ceil(pad / len(order)))[:pad]
    else:
        order = order[:total]
    return order[r:total:w]


@pytest.mark.parametrize("n", [1, 2, 7, 10, 33])
@pytest.mark.parametrize("w", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_matches_pytorch_semantics(n, w, drop_last, shuffle):
    ds = _ds(n)
    order = (gf.data.permutation(n, gf.Generator(5)).tolist() if shuffle else list(range(n)))
    shards = []
    for r in range(w):
        s = DistributedSampler(ds, num_replicas=w, rank=r, shuffle=shuffle, seed=5,
                               drop_last=drop_last)
        got = list(s)
        assert got == _ref_shard(order, n, w, r, drop_last)
        assert len(s) == len(got)
        shards.append(got)
    assert len({len(x) for x in shards}) == 1  # every rank the same number of samples
    flat = [i for sh in shards for i in sh]
    if not drop_last:
        assert set(flat) == set(range(n))  # every sample at least once
    else:
        assert len(set(flat)) == len(flat)  # disjoint


def test_pytorch_parity_without_shuffle():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DistributedSampler as TDS
    for n in (5, 8, 13):
        for w in (2, 3):
            for drop_last in (False, True):
                for r in range(w):
                    t = list(TDS(range(n), num_replicas=w, rank=r, shuffle=False,
                                 drop_last=drop_last))
                    g = list(DistributedSampler(_ds(n), w, r, shuffle=False,
                                                drop_last=drop_last))
                    assert g == t, (n, w, r, drop_last)
    del torch


def test_epoch_order_is_the_dataloaders_and_ranks_agree():
    n, seed = 40, 77
    single = DataLoader(_ds(n), batch_size=8, shuffle=True, generator=seed)
    s0 = DistributedSampler(_ds(n), 2, 0, seed=seed)
    s1 = DistributedSampler(_ds(n), 2, 1, seed=seed)
    orders = []
    for epoch in range(3):
        ref = np.concatenate([yb.numpy() for _, yb in single])  # epoch `epoch` of the loader
        for s in (s0, s1):
            s.set_epoch(epoch)
        a, b = s0.indices(), s1.indices()
        merged = np.empty(n, np.int64)
        merged[0::2], merged[1::2] = a, b
        np.testing.assert_array_equal(merged, ref)
        orders.append(merged)
    assert not np.array_equal(orders[0], orders[1])  # a new order each epoch


def test_rank_batches_are_the_single_process_batch():
    n, w, per_rank = 48, 3, 4
    ds = _ds(n)
    single = [yb.numpy() for _, yb in DataLoader(ds, batch_size=w * per_rank, shuffle=True,
                                                  generator=3)]
    ranks = []
    for r in range(w):
        s = DistributedSampler(ds, w, r, seed=3)
        ranks.append([yb.numpy() for _, yb in DataLoader(ds, batch_size=per_rank, sampler=s)])
    assert all(len(x) == len(single) for x in ranks)
    for b, ref in enumerate(single):
        got = np.concatenate([ranks[r][b] for r in range(w)])
        np.testing.assert_array_equal(np.sort(got), np.sort(ref))
        # interleaved: rank r's j-th sample is the single batch's (r + w j)-th
        for r in range(w):
            np.testing.assert_array_equal(ranks[r][b], ref[r::w])


def test_offset_continues_a_used_generator():
    n = 20
    g = gf.Generator(9)
    gf.data.permutation(n, g)  # the loader has drawn one epoch already
    s = DistributedSampler(_ds(n), 1, 0, seed=9, offset=g.offset)
    np.testing.assert_array_equal(s.indices(), gf.data.permutation(n, g))


def test_pad_false_gives_uneven_disjoint_shards():
    n = 7
    shards = [DistributedSampler(_ds(n), 3, r, shuffle=False, pad=False).indices().tolist()
              for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert [len(DistributedSampler(_ds(n), 3, r, pad=False)) for r in range(3)] == [3, 2, 2]


def test_loader_with_sampler_len_and_gather_and_resume():
    n = 23
    ds = _ds(n)

    def loader():
        s = DistributedSampler(ds, 2, 1, seed=4)
        s.set_epoch(2)
        return DataLoader(ds, batch_size=3, sampler=s)

    ref = [yb.numpy().tolist() for _, yb in loader()]
    assert len(loader()) == len(ref) == math.ceil(12 / 3)
    a = loader()
    it = iter(a)
    got = [next(it)[1].numpy().tolist(), next(it)[1].numpy().tolist()]
    sd = a.state_dict()
    assert sd["batches_done"] == 2 and sd["sampler"]["epoch"] == 2
    b = DataLoader(ds, batch_size=3, sampler=DistributedSampler(ds, 2, 1, seed=4))
    b.load_state_dict(sd)
    assert b.state_dict() == sd
    got += [yb.numpy().tolist() for _, yb in b]
    assert got == ref
    # after the epoch the state says "start of the next epoch's draw"
    assert b.state_dict() == {"sampler": {"seed": 4, "offset": 0, "epoch": 2},
                              "batches_done": 0}


def test_loader_state_between_epochs_lets_set_epoch_choose_the_next_order():
    # an epoch-end state restored, then set_epoch(e) as PyTorch's loop (and the Trainer) does:
    # the next iter() used to replay the saved epoch's order instead of epoch e's
    ds = _ds(10)
    s = DistributedSampler(ds, 2, 0, seed=1)
    a = DataLoader(ds, batch_size=2, sampler=s)
    s.set_epoch(0)
    first = [yb.numpy().tolist() for _, yb in a]
    sd = a.state_dict()
    assert sd == {"sampler": {"seed": 1, "offset": 0, "epoch": 0}, "batches_done": 0}
    s.set_epoch(1)
    second = [yb.numpy().tolist() for _, yb in a]
    assert second != first
    s2 = DistributedSampler(ds, 2, 0, seed=0)
    b = DataLoader(ds, batch_size=2, sampler=s2)
    b.load_state_dict(sd)
    assert s2.seed == 1 and b.state_dict() == sd  # restored at once
    s2.set_epoch(1)
    assert [yb.numpy().tolist() for _, yb in b] == second


def test_loader_with_plain_iterable_sampler():
    ds = _ds(6)
    batches = [yb.numpy().tolist() for _, yb in DataLoader(ds, batch_size=4,
                                                           sampler=[5, 4, 3, 2, 1, 0])]
    assert batches == [[5, 4, 3, 2], [1, 0]]
    assert [yb.numpy().tolist() for _, yb in DataLoader(ds, batch_size=4, drop_last=True,
                                                        sampler=[5, 4, 3, 2, 1, 0])] == \
        [[5, 4, 3, 2]]


def test_bad_input_is_named_and_changes_nothing():
    ds = _ds(10)
    with pytest.raises(ValueError, match="rank"):
        DistributedSampler(ds, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        DistributedSampler(ds, num_replicas=0, rank=0)
    with pytest.raises(TypeError, match="shuffle"):
        DistributedSampler(ds, 2, 0, shuffle="yes")
    with pytest.raises(ValueError, match="pad"):
        DistributedSampler(ds, 2, 0, drop_last=True, pad=False)
    with pytest.raises(ValueError, match="sampler"):
        DataLoader(ds, batch_size=2, shuffle=True, sampler=DistributedSampler(ds, 2, 0))
    with pytest.raises(TypeError, match="sampler"):
        DataLoader(ds, batch_size=2, sampler=3)
    with pytest.raises(ValueError, match="sampler"):
        list(DataLoader(ds, batch_size=2, sampler=[0, 10]))
    s = DistributedSampler(ds, 2, 0, seed=1)
    s.set_epoch(4)
    loader = DataLoader(ds, batch_size=2, sampler=s)
    before = loader.state_dict()
    with pytest.raises(ValueError, match="epoch"):
        loader.load_state_dict({"sampler": {"seed": 1, "offset": 0, "epoch": -1},
                                "batches_done": 0})
    with pytest.raises(ValueError, match="'sampler'"):
        loader.load_state_dict({"generator": np.zeros(16, np.uint8), "batches_done": 0})
    with pytest.raises(ValueError, match="batches_done"):
        loader.load_state_dict({"sampler": {"seed": 1, "offset": 0, "epoch": 0},
                                "batches_done": 99})
    with pytest.raises(ValueError, match="seed"):  # was accepted, and failed at iter()
        loader.load_state_dict({"sampler": {"seed": 2**64, "offset": 0, "epoch": 0},
                                "batches_done": 0})
    assert loader.state_dict() == before and s.epoch == 4
    with pytest.raises(ValueError, match="epoch"):
        s.set_epoch(-1)


def test_defaults_without_mpi_are_one_replica():
    s = DistributedSampler(_ds(5))
    assert (s.num_replicas, s.rank) == (gf.distributed.get_world_size(),
                                        gf.distributed.get_rank()) == (1, 0)
    assert sorted(s) == list(range(5))
