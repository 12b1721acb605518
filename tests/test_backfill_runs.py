"""Operating backfill runs: the state machine of pause/resume/cancel/retry, the command's
steering flags, and the admin's run pages (on the run's database: SQLite or PostgreSQL)."""

import datetime
import re
import signal
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from backfills import orchestration
from backfills.controls import RunStateError, cancel_run, pause_run, resume_run, retry_run
from backfills.leases import RateMeter, claim
from backfills.models import BackfillLane, BackfillRun, BackfillRunEvent
from tests.helpers import PRIORITY, priority_run_parameters, rewind_to
from tests.helpers import PriorityStepTask as Task  # the priority steps ran the code of that time

RUNS = reverse("admin:backfills_backfillrun_changelist")
Status = BackfillRun.Status


def make_run(status: str = Status.RUNNING, **fields) -> BackfillRun:
    return BackfillRun.objects.create(
        name=PRIORITY.name,
        status=status,
        parameters=priority_run_parameters(timezone.localdate()),
        **fields,
    )


def kinds(run: BackfillRun) -> list[str]:
    return list(run.events.order_by("at", "id").values_list("kind", flat=True))


def act(action, run: BackfillRun) -> BackfillRun:
    return action(run, using="default", actor="tester", origin="command")


def legacy(count: int) -> None:
    Task.objects.bulk_create([Task(title=f"legacy {i}") for i in range(count)])


def test_the_rate_is_measured_over_a_window_so_lanes_committing_together_do_not_spike_it(
    monkeypatch,
):
    from backfills import leases as backfill_control

    now = [100.0]
    monkeypatch.setattr(backfill_control.time, "monotonic", lambda: now[0])
    meter = RateMeter(None)

    # given: a first batch of 1,000 rows half a second after the start
    now[0] += 0.5
    assert meter.add(1_000) == 2_000

    # when: two lanes commit 3,000-row batches a millisecond apart, then 0.6 s later another
    now[0] += 0.4
    first = meter.add(3_000)
    now[0] += 0.001
    second = meter.add(3_000)
    now[0] += 0.6
    third = meter.add(3_000)

    # then: nothing moves before a whole window; then 9,000 rows over ~1 s count once
    assert first == second == 2_000
    assert third == pytest.approx(0.8 * 2_000 + 0.2 * 9_000 / 1.001)


# -- the state machine -----------------------------------------------------------------------


@pytest.mark.django_db
def test_pause_resume_and_cancel_a_run_nobody_is_working_on():
    run = make_run(Status.PENDING)

    assert act(pause_run, run).status == Status.PAUSED
    # nobody holds it: it waits for the next process (or worker) as pending
    assert act(resume_run, run).status == Status.PENDING
    cancelled = act(cancel_run, run)

    assert cancelled.status == Status.CANCELLED and cancelled.finished_at is not None
    assert kinds(run) == ["paused", "resumed", "cancelled"]
    assert set(run.events.values_list("actor", "origin")) == {("tester", "command")}


@pytest.mark.django_db
def test_a_run_being_worked_on_is_asked_and_its_process_finishes_the_action():
    run = make_run(Status.RUNNING)
    claim(run, owner="worker on host-a", origin="worker", using="default", lease_seconds=60)

    assert act(pause_run, run).status == Status.PAUSED
    assert act(resume_run, run).status == Status.RUNNING  # its process is waiting: carry on
    assert act(cancel_run, run).status == Status.CANCELLING  # its process will finish it
    assert kinds(run)[-1] == "cancel requested"


@pytest.mark.django_db
def test_retry_makes_a_failed_run_pending_from_its_checkpoint():
    run = make_run(Status.FAILED, last_key=41, rows_done=41, last_error="boom")

    retried = act(retry_run, run)

    assert (retried.status, retried.last_key, retried.rows_done) == (Status.PENDING, 41, 41)
    assert kinds(run) == ["retried"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "action", "message"),
    [
        (Status.SUCCEEDED, resume_run, "Run #\\d+ is succeeded: resume applies only to a run"),
        (Status.CANCELLED, cancel_run, "Run #\\d+ is already cancelled"),
        (Status.PAUSED, pause_run, "Run #\\d+ is already paused"),
        (Status.RUNNING, resume_run, "Run #\\d+ is already running"),
        (Status.SUCCEEDED, retry_run, "retry applies only to a run that is failed"),
        (Status.SUCCEEDED, cancel_run, "cancel applies only to a run that is pending, running"),
    ],
)
def test_an_action_in_the_wrong_state_says_why_and_changes_nothing(status, action, message):
    run = make_run(status)
    before = BackfillRun.objects.filter(pk=run.pk).values().get()

    with pytest.raises(RunStateError, match=message + ".*Nothing was changed"):
        act(action, run)

    assert BackfillRun.objects.filter(pk=run.pk).values().get() == before
    assert not BackfillRunEvent.objects.exists()


@pytest.mark.django_db
def test_a_run_whose_process_stopped_renewing_its_lease_is_shown_stalled(settings):
    settings.BACKFILL_LEASE_SECONDS = 30
    long_ago = timezone.now() - datetime.timedelta(minutes=5)
    stalled = make_run(
        Status.RUNNING, lease_owner="worker on host-a", lease_expires_at=long_ago,
        heartbeat_at=long_ago, updated_at=long_ago,
    )  # fmt: skip
    fresh = make_run(
        Status.SUCCEEDED, lease_owner="", heartbeat_at=long_ago, rows_done=10, rows_estimated=10
    )

    waiting = BackfillRun.objects.create(
        name="another.backfill", status=Status.PENDING, parameters={},
        background=True, updated_at=long_ago,
    )  # fmt: skip

    assert stalled.is_stalled and stalled.status_label == "running (stalled)"
    assert not fresh.is_stalled and fresh.progress == 1.0
    # an estimate that was too low never shows a running run as done
    low_estimate = BackfillRun(status=Status.PAUSED, rows_done=130, rows_estimated=100)
    assert low_estimate.progress == 0.99
    assert waiting.status_label == "pending (no worker has picked it up)"


@pytest.mark.django_db
def test_a_new_owner_takes_over_an_expired_lease_and_the_old_one_loses_the_run():
    from backfills.engine import LeaseLost

    run = make_run(Status.RUNNING)
    old = claim(run, owner="worker A", origin="worker", using="default", lease_seconds=60)
    # A's lease runs out (it stopped renewing it)
    BackfillRun.objects.filter(pk=run.pk).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )

    new = claim(run, owner="worker B", origin="worker", using="default", lease_seconds=60)

    assert new is not None and new.generation == old.generation + 1
    with pytest.raises(LeaseLost):
        old.record_batch(last_key=10, rows=10, batch_size=10)
    with pytest.raises(LeaseLost):
        old.control()
    assert "taken over" in kinds(run)
    assert BackfillRun.objects.get(pk=run.pk).rows_done == 0


@pytest.mark.django_db
def test_a_pause_between_two_checkpoints_stops_the_run_after_the_next_batch(
    django_assert_num_queries,
):
    run = make_run(Status.RUNNING)
    checkpoint = claim(run, owner="worker A", origin="worker", using="default", lease_seconds=60)
    assert checkpoint.control() == "run"

    # given: a batch's checkpoint found the run running; it read the status for the next batch
    checkpoint.record_batch(last_key=10, rows=10, batch_size=10)
    with django_assert_num_queries(0):
        assert checkpoint.control() == "run"

    # when: an operator pauses it while the next batch runs
    act(pause_run, run)
    checkpoint.record_batch(last_key=20, rows=10, batch_size=10)

    # then: that batch is checkpointed, and the run stops before another
    assert checkpoint.control() == "pause"
    paused = BackfillRun.objects.get(pk=run.pk)
    assert (paused.status, paused.last_key, paused.rows_done) == (Status.PAUSED, 20, 20)


@pytest.mark.django_db
def test_a_pause_while_the_process_waits_between_batches_is_seen_before_the_next_one():
    run = make_run(Status.RUNNING)
    checkpoint = claim(run, owner="worker A", origin="worker", using="default", lease_seconds=60)
    checkpoint.record_batch(last_key=10, rows=10, batch_size=10)

    # when: paused while the process sleeps between batches (--sleep), keeping its lease
    act(pause_run, run)
    checkpoint.heartbeat()

    # then: the next batch does not start
    assert checkpoint.control() == "pause"


@pytest.mark.django_db
def test_a_checkpoint_answers_for_one_batch_only():
    run = make_run(Status.RUNNING)
    checkpoint = claim(run, owner="worker A", origin="worker", using="default", lease_seconds=60)
    checkpoint.record_batch(last_key=10, rows=10, batch_size=10)
    assert checkpoint.control() == "run"

    # when: paused after that answer, before another batch was checkpointed
    act(pause_run, run)

    # then: the status is read again
    assert checkpoint.control() == "pause"


@pytest.mark.django_db
def test_a_live_lease_is_not_taken():
    run = make_run(Status.RUNNING)
    claim(run, owner="worker A", origin="worker", using="default", lease_seconds=60)

    assert claim(run, owner="worker B", origin="worker", using="default", lease_seconds=60) is None


# -- the command's steering flags ------------------------------------------------------------


def steer(**options) -> str:
    out = StringIO()
    call_command("backfill_priority", stdout=out, **options)
    return out.getvalue()


def test_the_command_pauses_resumes_cancels_and_shows_the_run_table(expand_step):
    # given: a run stopped after one batch, still open
    legacy(9)
    steer(batch_size=3, max_batches=1, target_batch_ms=0, no_progress=True)
    run = BackfillRun.objects.get()

    # when / then
    assert f"Run #{run.pk} is now paused." in steer(pause=True)
    status = steer(status=True)
    assert "paused" in status and f"#{run.pk}" in status and "3 " in status
    with pytest.raises(CommandError, match="is paused. Resume it"):
        steer(no_progress=True)
    assert f"Run #{run.pk} is now pending." in steer(resume=True)
    assert f"Run #{run.pk} is now cancelled." in steer(cancel=True)
    with pytest.raises(CommandError, match="no open tasks.task.priority run to pause"):
        steer(pause=True)
    assert Task.objects.filter(priority__isnull=True).count() == 6  # nothing else was filled
    assert kinds(run) == ["created", "processing", "paused", "resumed", "cancelled"]


def test_status_without_any_run_says_so(expand_step):
    assert "No tasks.task.priority backfill has run on this database yet." in steer(status=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pause": True, "cancel": True}, "Use only one of --pause, --resume, --cancel"),
        ({"status": True, "dry_run": True}, "cannot be combined with --dry-run"),
        ({"resume": True, "background": True}, "cannot be combined with --background"),
        ({"pause": True, "workers": "2"}, "cannot be combined with --workers"),
    ],
)
def test_the_steering_flags_exclude_each_other_and_change_nothing(expand_step, options, message):
    legacy(3)
    steer(batch_size=1, max_batches=1, target_batch_ms=0, no_progress=True)
    before = list(BackfillRun.objects.values())

    with pytest.raises(CommandError, match=message):
        steer(**options)

    assert list(BackfillRun.objects.values()) == before


def test_a_run_records_its_estimate_rate_batch_size_and_who_started_it(expand_step):
    legacy(40)

    steer(batch_size=10, target_batch_ms=0, no_progress=True)

    run = BackfillRun.objects.get()
    assert (run.status, run.rows_done, run.batch_size) == (Status.SUCCEEDED, 40, 10)
    # exact on SQLite; PostgreSQL's planner estimate (tested on its own in the PostgreSQL suite)
    assert run.rows_estimated == 40 if connection.vendor == "sqlite" else run.rows_estimated > 0
    assert run.origin == "command" and run.started_by.startswith("command ")
    assert run.rows_per_second > 0 and run.lease_owner == "" and run.heartbeat_at is not None
    assert kinds(run) == ["created", "processing", "succeeded"]


# -- the admin ------------------------------------------------------------------------------


@pytest.fixture
def alice(client, demo_data):
    """The demo Admin: may view and control backfill runs."""
    client.force_login(get_user_model().objects.get(username="alice"))
    return client


@pytest.fixture
def viewer(client, demo_data):
    """A staff user who may view backfill runs but not control them."""
    user = get_user_model().objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_backfillrun"))
    client.force_login(user)
    return client


def test_the_run_list_shows_progress_rate_eta_and_reloads_while_a_run_is_open(alice):
    make_run(
        Status.RUNNING, rows_done=250, rows_estimated=1000, rows_per_second=50.0, batch_size=300
    )

    page = alice.get(RUNS).content.decode()

    assert '<progress class="backfill-progress" max="100" value="25.0"></progress> 25%' in page
    assert "250 / 1,000" in page and "15 s" in page  # 750 rows left at 50 rows/s
    assert 'http-equiv="refresh"' in page
    assert 'id="start-backfill"' in page


def test_the_run_list_stops_reloading_once_every_run_is_finished(alice):
    make_run(Status.SUCCEEDED, rows_done=10, rows_estimated=10)

    page = alice.get(RUNS).content.decode()

    assert 'http-equiv="refresh"' not in page and "100%" in page


def test_the_run_page_offers_the_actions_its_status_allows_and_applies_them(alice):
    run = make_run(Status.RUNNING)
    page = reverse("admin:backfills_backfillrun_change", args=[run.pk])

    buttons = alice.get(page).content.decode()
    assert 'id="pause-run"' in buttons and 'id="cancel-run"' in buttons
    assert 'id="resume-run"' not in buttons and 'id="retry-run"' not in buttons

    response = alice.post(
        reverse("admin:backfills_backfillrun_control", args=[run.pk, "pause"]), follow=True
    )

    assert BackfillRun.objects.get(pk=run.pk).status == Status.PAUSED
    assert f"Run #{run.pk} is now paused." in response.content.decode()
    assert '<td class="field-kind">' in response.content.decode()  # the history inline
    assert 'id="resume-run"' in response.content.decode()
    assert run.events.get().actor == "alice" and run.events.get().origin == "admin"


def test_the_run_page_shows_the_lanes_of_a_parallel_run_with_their_checkpoints(alice):
    run = make_run(Status.RUNNING, workers=2, rows_done=1_500)
    BackfillLane.objects.create(run=run, number=1, after_key=0, upto_key=5000, last_key=1000)
    BackfillLane.objects.create(run=run, number=2, after_key=5000, last_key=5500, finished=True)

    page = alice.get(reverse("admin:backfills_backfillrun_change", args=[run.pk])).content.decode()

    cells = re.findall(r'<td class="field-(?:after|upto|last)_key">\s*<p>([^<]*)</p>', page)
    assert cells == ["0", "5000", "1000", "5000", "-", "5500"]
    assert re.search(r'field-workers">.*?<div class="readonly">2</div>', page, re.S)


def test_a_run_on_one_connection_shows_no_lanes(alice):
    run = make_run(Status.SUCCEEDED)

    page = alice.get(reverse("admin:backfills_backfillrun_change", args=[run.pk])).content.decode()

    assert "Backfill lanes" not in page and "Backfill run events" in page


def test_an_admin_action_in_the_wrong_state_shows_why_and_changes_nothing(alice):
    run = make_run(Status.SUCCEEDED)

    response = alice.post(
        RUNS, {"action": "resume_runs", "_selected_action": [run.pk]}, follow=True
    )

    assert "resume applies only to a run that is paused" in response.content.decode()
    assert BackfillRun.objects.get(pk=run.pk).status == Status.SUCCEEDED


def test_without_the_control_permission_runs_are_shown_but_cannot_be_steered(viewer):
    run = make_run(Status.RUNNING)

    page = viewer.get(reverse("admin:backfills_backfillrun_change", args=[run.pk])).content.decode()
    control = viewer.post(reverse("admin:backfills_backfillrun_control", args=[run.pk, "pause"]))
    start = viewer.post(reverse("admin:backfills_backfillrun_start"))
    actions = viewer.post(RUNS, {"action": "pause_runs", "_selected_action": [run.pk]})

    assert f"#{run.pk}" in page and 'id="pause-run"' not in page
    assert 'id="start-backfill"' not in viewer.get(RUNS).content.decode()
    assert control.status_code == 403 and start.status_code == 403
    assert actions.status_code == 200  # Django answers an unknown action with the list again
    assert BackfillRun.objects.get(pk=run.pk).status == Status.RUNNING


def test_only_operators_see_the_runs(client, demo_data):
    client.force_login(get_user_model().objects.get(username="bob"))

    assert client.get(RUNS).status_code == 403


def test_start_from_the_admin_with_nothing_to_fill_says_so_and_writes_nothing(alice):
    response = alice.post(
        reverse("admin:backfills_backfillrun_start"), {"name": PRIORITY.name}, follow=True
    )

    assert "Nothing to backfill: no task has a NULL priority." in response.content.decode()
    assert not BackfillRun.objects.exists()


@pytest.fixture
def alice_at_expand(transactional_db, client):
    """alice logged in, on a database between the priority rollout's expand and contract
    steps (the demo data loaded before it was migrated back there)."""
    with rewind_to("0002_priority_expand", "demo"):
        client.force_login(get_user_model().objects.get(username="alice"))
        yield client


def test_start_from_the_admin_enqueues_the_run_for_task_workers(alice_at_expand):
    from django_tasks_db.models import DBTaskResult

    alice = alice_at_expand
    legacy(5)

    response = alice.post(
        reverse("admin:backfills_backfillrun_start"), {"name": PRIORITY.name}, follow=True
    )

    run = BackfillRun.objects.get()
    assert (run.status, run.origin, run.started_by, run.background) == (
        Status.PENDING,
        "admin",
        "alice",
        True,
    )
    task = DBTaskResult.objects.get()
    assert str(task.id) == run.worker_task_id and task.args_kwargs["kwargs"]["run_id"] == run.pk
    assert f"Run #{run.pk} of tasks.task.priority started on task workers" in (
        response.content.decode()
    )
    again = alice.post(
        reverse("admin:backfills_backfillrun_start"), {"name": PRIORITY.name}, follow=True
    )
    assert f"Run #{run.pk} of tasks.task.priority carries on" in again.content.decode()


def run_worker_until_idle() -> None:
    """One `manage.py db_worker --batch` pass over the backfill queue, in this process."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        call_command(
            "db_worker",
            queue_name="backfill",
            batch=True,
            startup_delay=False,
            reload=False,
            verbosity=0,
        )
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_a_worker_carries_out_a_run_started_in_the_background(expand_step):
    # given
    legacy(25)
    out = steer(background=True)
    run = BackfillRun.objects.get()
    assert "manage.py db_worker --queue-name backfill" in out and run.status == Status.PENDING

    # when
    started = timezone.now()
    run_worker_until_idle()

    # then: one slice did it all; its successor is due just after the slice's lease would have
    # run out, had its worker died (and finds nothing to do)
    from django.conf import settings
    from django_tasks_db.models import DBTaskResult

    from backfills.workers import TAKEOVER_MARGIN_SECONDS

    run.refresh_from_db()
    successor = DBTaskResult.objects.get(pk=run.worker_task_id)
    due = (successor.run_after - started).total_seconds()
    lease = settings.BACKFILL_LEASE_SECONDS + TAKEOVER_MARGIN_SECONDS
    assert lease <= due <= lease + 5
    assert (run.status, run.rows_done, run.origin, run.background) == (
        Status.SUCCEEDED,
        25,
        "command",
        True,
    )
    assert not Task.objects.filter(priority__isnull=True).exists()
    assert kinds(run) == ["created", "enqueued", "processing", "succeeded"]
    assert run.lease_owner == "" and run.events.get(kind="processing").actor.startswith("worker")


# -- faults and edges of steering ------------------------------------------------------------


@pytest.mark.django_db
def test_cancelling_a_run_whose_lease_lapsed_stops_its_still_living_process():
    from backfills.engine import LeaseLost

    run = make_run(Status.RUNNING)
    alive = claim(run, owner="slow command", origin="command", using="default", lease_seconds=60)
    # its lease lapses (a long pause between batches), but the process is still there
    BackfillRun.objects.filter(pk=run.pk).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )

    assert act(cancel_run, run).status == Status.CANCELLED
    with pytest.raises(LeaseLost, match="was cancelled"):
        alive.record_batch(last_key=10, rows=10, batch_size=10)
    assert BackfillRun.objects.get(pk=run.pk).rows_done == 0


def test_steering_before_the_run_ledger_exists_says_which_migration_to_apply(transactional_db):
    call_command("migrate", "tasks", "0001", verbosity=0)
    call_command("migrate", "backfills", "zero", verbosity=0)
    try:
        with pytest.raises(CommandError, match="Run: manage.py migrate backfills"):
            steer(status=True)
    finally:
        call_command("migrate", verbosity=0)


def test_background_with_a_broken_health_check_is_refused_and_writes_nothing(expand_step, settings):
    from django_tasks_db.models import DBTaskResult

    settings.BACKFILL_HEALTH_CHECK = "tests.nowhere.check"
    legacy(3)

    with pytest.raises(CommandError, match="BACKFILL_HEALTH_CHECK"):
        steer(background=True)

    assert not BackfillRun.objects.exists() and not DBTaskResult.objects.exists()


def test_a_superseded_worker_task_does_nothing(expand_step):
    from backfills.workers import run_slice

    legacy(5)
    steer(background=True)
    run = BackfillRun.objects.get()

    outcome = run_slice(run.pk, task_id="an-older-task", using="default")

    assert outcome == f"superseded by task {run.worker_task_id}"
    assert Task.objects.filter(priority__isnull=True).count() == 5


def test_slices_hand_the_run_over_to_their_successors(expand_step, settings):
    from backfills.workers import run_slice

    # given: slices of ~0.3 s and batches of 50 with a pause, for 600 rows
    settings.BACKFILL_SLICE_SECONDS = 0.3
    settings.BACKFILL_WORKER_BATCH_SIZE = 50
    settings.BACKFILL_WORKER_SLEEP_SECONDS = 0.05
    settings.BACKFILL_TARGET_BATCH_MS = 0
    legacy(600)
    steer(background=True)
    run = BackfillRun.objects.get()
    tasks_run = []

    # when: each slice's successor runs in turn, as workers would pick them up
    while run.status != Status.SUCCEEDED and len(tasks_run) < 50:
        task_id = run.worker_task_id
        tasks_run.append(run_slice(run.pk, task_id=task_id, using="default"))
        run.refresh_from_db()

    # then: several slices, each carrying on from the last checkpoint
    assert run.status == Status.SUCCEEDED and run.rows_done == 600
    assert len(tasks_run) >= 2 and all("time budget" in t for t in tasks_run[:-1])
    assert kinds(run).count("processing") == len(tasks_run)
    assert not Task.objects.filter(priority__isnull=True).exists()


def test_a_task_that_finds_the_run_held_comes_back_when_the_lease_would_expire(expand_step):
    from django_tasks_db.models import DBTaskResult

    from backfills.workers import TAKEOVER_MARGIN_SECONDS, run_slice

    # given: a background run another process holds, its lease renewed until 20 s from now
    legacy(5)
    steer(background=True)
    run = BackfillRun.objects.get()
    expires = timezone.now() + datetime.timedelta(seconds=20)
    BackfillRun.objects.filter(pk=run.pk).update(
        lease_owner="worker on host-b", lease_expires_at=expires
    )

    # when: its task runs
    outcome = run_slice(run.pk, task_id=run.worker_task_id, using="default")

    # then: it did nothing but enqueue its successor, due just after that lease would expire
    run.refresh_from_db()
    successor = DBTaskResult.objects.get(pk=run.worker_task_id)
    assert outcome.startswith(f"waiting: run #{run.pk} is held by worker on host-b until ")
    due = (successor.run_after - expires).total_seconds()
    assert TAKEOVER_MARGIN_SECONDS - 1 <= due <= TAKEOVER_MARGIN_SECONDS + 1
    assert Task.objects.filter(priority__isnull=True).count() == 5
    BackfillRun.objects.update(lease_owner="", lease_expires_at=None)  # host-b lets go


def test_resuming_a_background_run_starts_a_fresh_chain_of_tasks(expand_step):
    from django_tasks_db.models import DBTaskResult

    legacy(5)
    steer(background=True)
    run = BackfillRun.objects.get()
    first_task = run.worker_task_id

    act(pause_run, run)
    resumed = orchestration.steer(run, "resume", using="default", actor="tester", origin="command")

    assert resumed.status == Status.PENDING and resumed.worker_task_id != first_task
    assert DBTaskResult.objects.filter(id=resumed.worker_task_id).exists()
