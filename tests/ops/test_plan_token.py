"""``ops._plan.token``: the key under which the CUDA path finds a plan's compiled kernels on every launch."""

from problems import MACE_PROBLEMS

from batmobile_nn.ops import _plan


def test_equal_contents_equal_tokens_and_different_contents_differ():
    first, second = MACE_PROBLEMS[0].plan(), MACE_PROBLEMS[1].plan()
    a = _plan.token(first.plan_list, first.cg_list)
    assert _plan.token(first.plan_list, first.cg_list) == a  # new list objects, same contents
    assert _plan.token(second.plan_list, second.cg_list) != a
    other_cg = first.cg_list
    other_cg[-1] *= 2.0
    assert _plan.token(first.plan_list, other_cg) not in (a, _plan.token(second.plan_list, second.cg_list))


def test_a_list_changed_in_place_gets_the_token_of_its_new_contents():
    plan = MACE_PROBLEMS[0].plan()
    plan_list, cg_list = plan.plan_list, plan.cg_list
    before = _plan.token(plan_list, cg_list)
    original = cg_list[0]
    cg_list[0] = original + 1.0
    changed = _plan.token(plan_list, cg_list)
    assert changed != before
    assert changed == _plan.token(list(plan_list), list(cg_list))  # the same as a fresh list of those contents
    cg_list[0] = original
    assert _plan.token(plan_list, cg_list) == before


def test_tuples_are_remembered_too():
    plan = MACE_PROBLEMS[0].plan()
    assert _plan.token(plan.plan, plan.cg) == _plan.token(plan.plan_list, plan.cg_list)
    entry = _plan._by_object[(id(plan.plan), id(plan.cg))]
    assert entry[2] == plan.plan and entry[3] == plan.cg  # the copy compares equal: the next call takes the fast path


def test_threads_seeing_new_plans_at_once_get_distinct_tokens(monkeypatch):
    """Tokens are handed out atomically: two plans never share one (they key the compiled kernels). The two threads
    are held at the insertion until both have their token in hand: the moment a count taken before it would repeat."""
    import threading

    barrier = threading.Barrier(2, timeout=10)

    class HeldAtInsertion(dict):
        def setdefault(self, key, value):
            barrier.wait()
            return dict.setdefault(self, key, value)

    monkeypatch.setattr(_plan, "_tokens", HeldAtInsertion(_plan._tokens))
    contents = [([2000 + i, 7, 7], [0.5 * i, 0.25]) for i in range(2)]
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _plan.token(*contents[i]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] != results[1]


def test_held_lists_are_remembered_not_rebuilt(monkeypatch):
    """The same list objects a second time: no tuple of their contents is built (the remembered entry is used)."""
    plan = MACE_PROBLEMS[1].plan()
    plan_list, cg_list = plan.plan_list, plan.cg_list
    expected = _plan.token(plan_list, cg_list)
    looked_up = []
    monkeypatch.setattr(_plan, "_tokens", type("Spy", (dict,), {
        "get": lambda self, key, default=None: looked_up.append(key) or dict.get(self, key, default)})(
            _plan._tokens))
    assert [_plan.token(plan_list, cg_list) for _ in range(3)] == [expected] * 3
    assert looked_up == []
    _plan.token(list(plan_list), cg_list)  # a new list object: looked up by contents
    assert len(looked_up) == 1
