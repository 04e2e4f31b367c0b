import threading
import time

from matrix.run.cellreport import CellReport as Outcome
from matrix.run.plan import PlannedCell
from matrix.run.retry import Decision
from matrix.run.scheduler import Scheduler
from results.model import CellKind, State


class FakeHost:
    def __init__(self, name):
        self.name = name


def cells(hosts=("a", "b"), targets=("t1", "t2")):
    found = []
    for h in hosts:
        fake = FakeHost(h)
        found.append(PlannedCell(fake, "hostgen", CellKind.HOSTGEN))
        for t in targets:
            found.append(PlannedCell(fake, t, CellKind.BUILD, (f"{h}.hostgen",)))
    return found


def run(plan, results, **options):
    finished = {}

    def execute(cell, attempt):
        answer = results.get(cell.id, State.SUCCESS)
        if callable(answer):
            answer = answer(attempt)
        return Outcome(answer)

    Scheduler(plan, execute, lambda c, o: finished.__setitem__(c.id, o),
              max_parallel=options.pop("max_parallel", 2), **options).run()
    return finished


def test_failed_prerequisite_skips_dependents_with_missing_dependency():
    done = run(cells(), {"a.hostgen": State.FAILED})
    assert done["a.hostgen"].state is State.FAILED
    assert done["a.t1"].state is State.SKIPPED
    assert done["a.t1"].evidence == ("prerequisite failed: a.hostgen",)
    assert done["a.t1"].hint == "missing-dependency"
    assert done["b.t1"].state is State.SUCCESS


def test_retries_only_failed_cells_and_count_attempts():
    flaky = {"a.t1": lambda attempt: State.FAILED if attempt == 1 else State.SUCCESS,
             "b.t2": State.FAILED}
    done = run(cells(), flaky, decide=lambda report, attempt: Decision(
        report.state.is_failure and attempt <= 2))
    assert done["a.t1"].state is State.SUCCESS and done["a.t1"].attempts == 2
    assert done["b.t2"].state is State.FAILED and done["b.t2"].attempts == 3
    assert done["a.t2"].attempts == 1


def test_fail_fast_stops_queued_cells():
    plan = cells(hosts=("a", "b", "c"))
    stop = threading.Event()
    done = {}
    scheduler = Scheduler(plan, lambda c, a: Outcome(State.FAILED if c.id == "a.hostgen"
                                                     else State.SUCCESS),
                          lambda c, o: done.__setitem__(c.id, o), max_parallel=1,
                          fail_fast=True, stop=stop)
    scheduler.run()
    assert scheduler.failed_fast and stop.is_set()
    assert "c.t2" not in done


def test_parallelism_is_bounded():
    live, peak, lock = [0], [0], threading.Lock()

    def execute(cell, attempt):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.05)
        with lock:
            live[0] -= 1
        return Outcome(State.SUCCESS)

    Scheduler(cells(hosts="abcd"), execute, lambda c, o: None, max_parallel=3).run()
    assert peak[0] == 3


def test_excluded_cells_are_settled_without_running():
    plan = cells(hosts=("a",))
    plan[1] = PlannedCell(plan[1].host, "t1", CellKind.BUILD, ("a.hostgen",), excluded="no")
    ran = []

    def execute(cell, attempt):
        ran.append(cell.id)
        return Outcome(State.SUCCESS)

    done = {}
    Scheduler(plan, execute, lambda c, o: done.__setitem__(c.id, o), max_parallel=2).run()
    assert "a.t1" not in ran
    assert done["a.t1"].state is State.EXCLUDED and done["a.t1"].reason == "no"


def test_resumed_run_skips_finished_cells():
    ran = []

    def execute(cell, attempt):
        ran.append(cell.id)
        return Outcome(State.SUCCESS)

    Scheduler(cells(hosts=("a",)), execute, lambda c, o: None, max_parallel=2,
              done={"a.t1": State.FAILED}).run()
    assert sorted(ran) == ["a.hostgen", "a.t2"]


def test_an_exception_in_a_cell_becomes_an_error_outcome():
    def execute(cell, attempt):
        if cell.id == "a.t1":
            raise RuntimeError("boom")
        return Outcome(State.SUCCESS)

    done = {}
    Scheduler(cells(hosts=("a",)), execute, lambda c, o: done.__setitem__(c.id, o),
              max_parallel=2).run()
    assert done["a.t1"].state is State.ERROR and "boom" in done["a.t1"].evidence[0]


def test_hostgen_cells_start_first():
    order = []

    def execute(cell, attempt):
        order.append(cell.id)
        return Outcome(State.SUCCESS)

    Scheduler(cells(hosts=("a", "b")), execute, lambda c, o: None, max_parallel=1).run()
    assert order[:2] == ["a.hostgen", "b.hostgen"]


def test_a_chains_head_starts_before_leaves_that_were_planned_first():
    host = FakeHost("a")
    plan = [PlannedCell(host, "hostgen", CellKind.HOSTGEN),
            PlannedCell(host, "tox", CellKind.CHECK, ("a.hostgen",)),
            PlannedCell(host, "small", CellKind.BUILD, ("a.hostgen",)),
            PlannedCell(host, "vm", CellKind.BUILD, ("a.hostgen",)),
            PlannedCell(host, "vm:boot", CellKind.BOOT, ("a.vm",))]
    started = []

    def execute(cell, attempt):
        started.append(cell.id)
        return Outcome(State.SUCCESS)

    Scheduler(plan, execute, lambda c, o: None, max_parallel=1).run()
    assert started[:2] == ["a.hostgen", "a.vm"]
    assert started.index("a.tox") < started.index("a.small")  # plan order among equals


def test_critical_paths_of_a_deep_plan():
    from matrix.run.scheduler import critical_paths

    host = FakeHost("a")
    plan = [PlannedCell(host, "c0", CellKind.BUILD)]
    plan += [PlannedCell(host, f"c{i}", CellKind.BUILD, (f"a.c{i - 1}",)) for i in range(1, 5000)]
    paths = critical_paths(plan, {"a.c4999": 1.0})
    assert paths["a.c4999"] == 1.0 and paths["a.c0"] == 4999 * 30.0 + 1.0


def test_long_cells_start_first_by_their_last_durations():
    """A warm run's boots (40 s each) before the tox rows (20 s) and quick builds, so the
    two boots do not end up one after the other on one slot."""
    plan = []
    for name in ("a", "b"):
        host = FakeHost(name)
        plan += [PlannedCell(host, "hostgen", CellKind.HOSTGEN),
                 PlannedCell(host, "tox", CellKind.CHECK, (f"{name}.hostgen",)),
                 PlannedCell(host, "small", CellKind.BUILD, (f"{name}.hostgen",)),
                 PlannedCell(host, "vm", CellKind.BUILD, (f"{name}.hostgen",)),
                 PlannedCell(host, "vm:boot", CellKind.BOOT, (f"{name}.vm",))]
    last = {"a.tox": 20, "b.tox": 20, "a.small": 2, "b.small": 2, "a.vm": 11, "b.vm": 11,
            "a.vm:boot": 40, "b.vm:boot": 40}
    started = []

    def execute(cell, attempt):
        started.append(cell.id)
        return Outcome(State.SUCCESS)

    Scheduler(plan, execute, lambda c, o: None, max_parallel=1, estimates=last).run()
    assert started[:4] == ["a.hostgen", "b.hostgen", "a.vm", "b.vm"]
    assert started[4:6] == ["a.vm:boot", "b.vm:boot"]
    assert started[6:] == ["a.tox", "b.tox", "a.small", "b.small"]


def test_a_cell_left_pending_keeps_its_dependents_pending_not_skipped():
    fake = FakeHost("a")
    plan = [PlannedCell(fake, "hostgen", CellKind.HOSTGEN),
            PlannedCell(fake, "vm", CellKind.BUILD, ("a.hostgen",)),
            PlannedCell(fake, "vm-boot", CellKind.BOOT, ("a.hostgen", "a.vm")),
            PlannedCell(fake, "t2", CellKind.BUILD, ("a.hostgen",))]
    done = run(plan, {"a.vm": State.PENDING})  # its swarm node left: no verdict
    assert done["a.vm"].state is State.PENDING
    assert done["a.vm-boot"].state is State.PENDING
    assert done["a.vm-boot"].reason == "a.vm is pending" and not done["a.vm-boot"].evidence
    assert done["a.t2"].state is State.SUCCESS
