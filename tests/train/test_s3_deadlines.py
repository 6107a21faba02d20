"""An S3 that stops answering (a frozen proxy: connections accepted and kept open, no byte forwarded)
must cost its deadline, not hang the run: errors are classified by type (botocore's timeouts and
connection errors carry no response), every request fits the time left before its deadline, and the
run ends with one clear error and a non-zero exit status.

  - the classifier on each botocore / boto3 exception type;
  - the preflight against a frozen server gives up within its timeout + a few seconds, in process
    and through the launcher;
  - a run whose S3 freezes after its first commit exits non-zero within train.upload_timeout + 30 s
    of its last step (the final checkpoint's deadline counts from the step it is saved at, the wait
    for the upload still pending then included).
"""

from __future__ import annotations

import os
import re
import time

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore import exceptions as be

from mixvlp_ds.storage import parse_s3_uri
from mixvlp_ds.train.checkpoint_upload import AttemptRank, CheckpointUploader, UploadPolicy
from mixvlp_ds.train.s3sync import (
    ChecksumError,
    FencedError,
    PreflightError,
    S3Checkpoints,
    classify,
    error_code,
    is_permanent,
    retry,
)
from tests.conftest import TcpProxy


def client_error(code: str) -> be.ClientError:
    return be.ClientError({"Error": {"Code": code, "Message": "m"}}, "PutObject")


def wrapped(inner: BaseException) -> S3UploadFailedError:
    """What boto3's upload_file raises for a ClientError: a new error, raised while handling it."""
    try:
        raise inner
    except Exception:  # noqa: BLE001
        try:
            raise S3UploadFailedError(f"Failed to upload: {inner}")  # noqa: B904 - as boto3 does
        except S3UploadFailedError as e:
            return e


URL = "http://127.0.0.1:9/b/k"
CASES = [
    (be.ReadTimeoutError(endpoint_url=URL), "unreachable"),
    (be.ConnectTimeoutError(endpoint_url=URL), "unreachable"),
    (be.EndpointConnectionError(endpoint_url=URL), "unreachable"),
    (be.ConnectionClosedError(endpoint_url=URL), "unreachable"),
    (be.ProxyConnectionError(proxy_url=URL), "unreachable"),
    (ConnectionResetError("reset"), "unreachable"),
    (be.IncompleteReadError(actual_bytes=1, expected_bytes=2), "transient"),
    (be.ResponseStreamingError(error="x"), "transient"),
    (client_error("SlowDown"), "transient"),
    (client_error("InternalError"), "transient"),
    (client_error("500"), "transient"),
    (ChecksumError("size differs"), "transient"),
    (client_error("NoSuchBucket"), "permanent"),
    (client_error("AccessDenied"), "permanent"),
    (client_error("InvalidAccessKeyId"), "permanent"),
    (client_error("SignatureDoesNotMatch"), "permanent"),
    (be.NoCredentialsError(), "permanent"),
    (be.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), "permanent"),
    (be.ParamValidationError(report="bad"), "permanent"),
    (FencedError("taken over"), "permanent"),
    (FileNotFoundError("local file gone"), "permanent"),
    (AttributeError("'NoneType' object has no attribute 'get'"), "permanent"),   # a bug: not retried
    (wrapped(client_error("NoSuchBucket")), "permanent"),
    (wrapped(client_error("SlowDown")), "transient"),
    (wrapped(be.ReadTimeoutError(endpoint_url=URL)), "unreachable"),
]


@pytest.mark.parametrize("error,kind", CASES, ids=[f"{type(e).__name__}-{k}" for e, k in CASES])
def test_errors_are_classified_by_type(error, kind):
    assert classify(error) == kind
    assert is_permanent(error) == (kind == "permanent")


def test_error_code_of_errors_without_a_response():
    assert error_code(be.ReadTimeoutError(endpoint_url=URL)) is None
    e = be.ConnectTimeoutError(endpoint_url=URL)
    e.response = None
    assert error_code(e) is None
    assert error_code(client_error("NoSuchKey")) == "NoSuchKey"


def test_retry_backs_off_on_timeouts_and_keeps_its_deadline():
    calls, reports = [], []

    def fn():
        calls.append(time.time())
        raise be.ReadTimeoutError(endpoint_url=URL)

    t0 = time.time()
    with pytest.raises(RuntimeError, match=r"S3 did not answer: gave up after \d+ attempt"):
        retry(fn, "probe", time.time() + 2.0, 0.2, reports.append)
    assert 1.0 < time.time() - t0 < 2.5 and len(calls) >= 3
    assert all("ReadTimeoutError" in r for r in reports)
    with pytest.raises(RuntimeError, match="NoSuchBucket"):   # permanent: at once, no report
        retry(lambda: (_ for _ in ()).throw(client_error("NoSuchBucket")), "p", time.time() + 60, 0.2,
              pytest.fail)


@pytest.fixture
def frozen(s3_server, s3_bucket, monkeypatch):
    """A proxy of its own in front of the shared S3 server, AWS_ENDPOINT_URL pointing at it
    (freezing the shared proxy would stall other tests' pooled connections); yields it."""
    proxy = TcpProxy(s3_server.port)
    proxy.restore()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    yield proxy
    proxy.frozen.clear()
    proxy.cut()


def test_in_process_preflight_against_a_frozen_server_keeps_its_timeout(tmp_path, s3_bucket, frozen):
    up = CheckpointUploader(tmp_path, f"s3://{s3_bucket}/run", AttemptRank(0, 1, "a1"),
                            UploadPolicy(backoff=1.0), log=lambda m: None)
    up.preflight(timeout=10)                       # answering: fine
    frozen.freeze()
    t0 = time.time()
    with pytest.raises(PreflightError, match="S3 did not answer") as info:
        up.preflight(timeout=10)
    took = time.time() - t0
    assert 5 < took < 14, took
    assert "NoneType" not in str(info.value) and "ReadTimeoutError" in str(info.value)


def test_requests_outside_a_deadline_are_bounded_once_s3_was_found_down(s3_bucket, frozen):
    """After a retry gave up on an endpoint that does not answer, a plain request (the end-of-run
    look at `latest`) costs seconds, not read_timeout x attempts."""
    from mixvlp_ds.storage import s3_client

    s3 = S3Checkpoints(parse_s3_uri(f"s3://{s3_bucket}/run"), client=s3_client(max_attempts=2))
    assert s3.latest() is None
    frozen.freeze()
    with pytest.raises(RuntimeError, match="S3 did not answer"):
        retry(s3.latest, "latest", time.time() + 3, 0.5, lambda m: None)
    t0 = time.time()
    with pytest.raises(be.ReadTimeoutError):
        s3.latest()
    assert time.time() - t0 < 8
    frozen.restore()
    assert retry(s3.latest, "latest", time.time() + 30, 0.5, lambda m: None) is None   # back: clears


# -- through the launcher -------------------------------------------------------------------------
def rank_output(text: str) -> str:
    """The log without torchrun's own report of a failed rank (a traceback of the launcher's)."""
    return text.split("torch.distributed.elastic.multiprocessing.errors.ChildFailedError")[0].split(
        "Traceback (most recent call last):\n  File \"<frozen runpy>\"")[0]


LAUNCH = ["train.log_every=1", "train.progress=false", "train.upload_backoff=0.5", "data.batch_size=4",
          "train.batch_size=4", "train.keep_last=2"]


def test_launcher_preflight_against_a_frozen_server_exits_within_its_timeout(train_assets, s3_bucket,
                                                                             frozen, tmp_path):
    from tests.train.test_attempts import run_to_end
    from tests.train.test_launcher import torchrun

    frozen.freeze()
    log = tmp_path / "frozen.log"
    proc = torchrun(train_assets["config"], tmp_path / "out",
                    [*LAUNCH, "train.steps=4", f"train.ckpt_uri=s3://{s3_bucket}/r",
                     "train.preflight_timeout=10"], nproc=1, log=log)
    code, text = run_to_end(proc, log, timeout=240)
    assert code != 0, text[-3000:]
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "S3 preflight for" in lines[0], text[-3000:]
    took = re.search(r"S3 did not answer: gave up after \d+ attempt\(s\) in (\d+) s", lines[0])
    assert took and int(took.group(1)) <= 10 + 3, lines[0]
    assert "Traceback" not in rank_output(text) and "NoneType" not in text
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_a_run_whose_s3_freezes_after_its_first_commit_exits_within_the_upload_timeout(
        train_assets, s3_bucket, frozen, tmp_path):
    from tests.train.test_attempts import run_to_end
    from tests.train.test_launcher import torchrun

    uri = f"s3://{s3_bucket}/r"
    s3 = S3Checkpoints(parse_s3_uri(uri))
    log = tmp_path / "run.log"
    proc = torchrun(train_assets["config"], tmp_path / "out",
                    [*LAUNCH, "train.steps=20", "train.ckpt_every=5", f"train.ckpt_uri={uri}",
                     "train.upload_timeout=20"], nproc=1, log=log)
    last_step = final_upload = None
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and s3.latest() is None:
            time.sleep(0.1)
        frozen.freeze()                            # S3 stops answering; connections stay open
        while proc.poll() is None and time.time() < deadline:
            text = log.read_text()
            if last_step is None and "step 20/20" in text:
                last_step = time.time()
            if final_upload is None and "waiting for the upload of step_00000020 to finish" in text:
                final_upload = time.time()         # saved and submitted: only its upload is left
            time.sleep(0.1)
        end = time.time()
        code, text = run_to_end(proc, log, timeout=5)
    finally:
        frozen.restore()
    assert last_step is not None and final_upload is not None, text[-3000:]
    assert code != 0, text[-3000:]
    print(f"exited {end - last_step:.1f} s after its last step, {end - final_upload:.1f} s after the final "
          f"upload started")
    # the final checkpoint's train.upload_timeout counts from its step, the wait for the upload still
    # pending then (step 15's, upload_busy=wait) included
    assert end - last_step < 20 + 30, (end - last_step, text[-3000:])
    assert "NoneType" not in text and "Traceback" not in rank_output(text), text[-3000:]
    assert "error: the final checkpoint step_00000020 is saved locally" in text, text[-3000:]
    assert "S3 did not answer" in text
    assert os.path.isfile(tmp_path / "out" / "checkpoints" / "step_00000020" / "COMMITTED")
