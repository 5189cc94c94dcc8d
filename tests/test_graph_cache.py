"""The convolution's graph cache (``batmobile_nn/_cuda.py``): one sort per edge_index and step, never a stale
one. It runs on CPU tensors too, which is how it is tested here."""

import torch

from batmobile_nn import _cuda


def test_same_index_tensor_hits_and_a_changed_one_misses():
    receiver, sender = torch.tensor([3, 1, 2, 1, 0]), torch.tensor([0, 1, 2, 3, 4])
    first = _cuda._receiver_graph(receiver, 5, False)
    assert _cuda._receiver_graph(receiver, 5, False) is first
    assert _cuda._receiver_graph(receiver[:], 5, False) is first  # a view of the same memory: same graph
    copy = _cuda._receiver_graph(receiver.clone(), 5, False)
    assert copy is not first and torch.equal(copy[0], first[0]) and torch.equal(copy[1], first[1])
    assert _cuda._receiver_graph(receiver, 6, False) is not first  # other node count
    receiver[0] = 4  # in place: the version moves, the graph is recomputed
    changed = _cuda._receiver_graph(receiver, 5, False)
    assert changed is not first and torch.equal(changed[1], torch.tensor([0, 1, 3, 4, 4, 5]))
    send = _cuda._sorted_senders(sender, receiver, changed[0])
    assert torch.equal(send, sender[changed[0]])
    assert _cuda._sorted_senders(sender, receiver, changed[0]) is send


def test_cache_is_bounded():
    for n in range(3 * _cuda.MAX_GRAPHS):
        _cuda._sender_graph(torch.arange(n + 1), n + 1, None)
    assert len(_cuda._graphs) <= _cuda.MAX_GRAPHS


def test_element_chunks_once_per_element_tensor():
    from batmobile_nn import _sc

    element = torch.tensor([2, 0, 0, 1, 2, 2])
    first = _sc._chunks(element, 3, 2)
    assert _sc._chunks(element, 3, 2) is first
    assert _sc._chunks(element, 3, 4) is not first  # another chunk size
    perm, start, end, chunk_ptr = first
    assert perm.tolist() == [1, 2, 3, 0, 4, 5] and chunk_ptr.tolist() == [0, 1, 2, 4]


def test_element_index_traces_with_fake_tensors():
    """Fake tensors (make_fx, export) have no storage to key the cache on: the index is computed, not cached."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from batmobile_nn.nn._elements import element_index

    graph = make_fx(element_index, tracing_mode="fake")(torch.eye(4)[[2, 0, 3]])
    assert torch.equal(graph(torch.eye(4)[[1, 1, 0]]), torch.tensor([1, 1, 0]))


def test_int32_senders_are_sorted_once():
    """The sender graph is keyed on the index as given: an int32 one is not widened (a new tensor) first."""
    sender32 = torch.tensor([2, 0, 1, 0, 2], dtype=torch.int32)
    first = _cuda._sender_graph(sender32, 3, None)
    assert _cuda._sender_graph(sender32, 3, None) is first
    wide = _cuda._sender_graph(sender32.long(), 3, None)
    assert torch.equal(first[0], wide[0]) and torch.equal(first[1], wide[1]) and first[1].dtype == torch.int64


def test_functionalized_tensors_are_not_keyed():
    """torch.func.functionalize wraps tensors whose data pointer is 0 (no memory behind it): no key, so no cache
    entry can outlive an in-place change the wrapper does not show."""
    from batmobile_nn._identity import identity

    seen = []

    def f(t):
        seen.append(identity(t))
        return t + 1

    torch.func.functionalize(f)(torch.arange(4))
    assert seen == [None]
    assert identity(torch.arange(4)) is not None

