"""Small random graphs for the convolution tests (MACE's convention: row 0 sender, row 1 receiver)."""

import torch


def random_graph(n_nodes: int, n_edges: int, seed: int, isolated: int = -1, dtype: torch.dtype = torch.int64):
    """``(sender, receiver)`` of ``n_edges`` random edges; node ``isolated`` (if >= 0) has no edge at all."""
    generator = torch.Generator().manual_seed(seed)
    nodes = torch.tensor([i for i in range(n_nodes) if i != isolated])
    pick = torch.randint(0, len(nodes), (2, n_edges), generator=generator)
    sender, receiver = nodes[pick[0]], nodes[pick[1]]
    return sender.to(dtype), receiver.to(dtype)


def sort_by_receiver(sender: torch.Tensor, receiver: torch.Tensor):
    """The edges sorted by receiver (stable), and the permutation applied."""
    order = torch.argsort(receiver, stable=True)
    return sender[order], receiver[order], order


def e3nn_conv(tp, sender: torch.Tensor, receiver: torch.Tensor, n_nodes: int):
    """MACE's computation: e3nn tensor product on gathered senders, then a sum over receivers."""
    def conv(node_feats, edge_attrs, weight):
        messages = tp(node_feats[sender.long()], edge_attrs, weight)  # [n_edges, dim_out]
        out = torch.zeros(n_nodes, messages.shape[1], dtype=messages.dtype)
        return out.index_add(0, receiver.long(), messages)
    return conv
