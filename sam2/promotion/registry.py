"""The model registry client: register a candidate and apply the promotion rule (sam2.promotion.rules)
atomically with respect to other pipeline runs.

Every version's source is the loadable MLflow model folder next to the checkpoint (its `s3://` URI is a
tag); its metrics and lineage (data set version, training config, code version, pipeline run) are tags.

Two pipeline runs finishing at once must not both become champion. MLflow has no compare-and-set, so the
read-decide-write sequence runs under a lock:

* SQLite / file stores (local runs): an exclusive `fcntl` lock on a file next to the database. Registration
  happens under it too, which also keeps concurrent SQLite writers from tripping over each other.
* A tracking server: a lease kept as a registered-model tag (`promotion_lock` = `<owner> <expiry>`).
  Taking it is write-then-verify: write my owner id when the tag is free or expired, wait `settle_s`, read
  it back; only the owner whose id survived (the last writer) goes on, everyone else retries. After the
  alias is set, the champion is read again: if another run moved it meanwhile (possible only with a lost
  lease, a pause longer than the lease), that run's write stands and this version becomes challenger.
  Expiry frees the lease of a crashed run.

`ModelRegistry` is the small interface the pipeline uses (register and promote, read the champion), so a
Kubeflow Model Registry backend can be added later beside `MlflowModelRegistry`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from sam2.promotion.gate import GateCheck, GateSettings, apply_gate, gate_tags
from sam2.promotion.rules import (
    CHALLENGER,
    CHAMPION,
    PRIMARY_METRIC,
    Candidate,
    ChampionInfo,
    HeadToHead,
    PromotionResult,
    choose,
    metric_tag,
    model_name_for,
)
from sam2.utils.file_lock import exclusive_file_lock
from sam2.utils.retry import wait_for_http_service

logger = logging.getLogger(__name__)

LOCK_TAG = "promotion_lock"


class ModelRegistry(Protocol):
    """What the pipeline needs of a registry: register a candidate and apply the promotion rule atomically
    with respect to other runs, and name the current champion (to score it beside the new model)."""

    def register_and_promote(
        self,
        candidate: Candidate,
        margin: float,
        allow_random_init: bool = False,
        gate_checks: Sequence[GateCheck] = (),
        gate_settings: GateSettings | None = None,
    ) -> PromotionResult: ...

    def champion_details(self, dataset_name: str) -> ChampionInfo | None: ...


def wait_for_tracking_server(uri: str) -> None:
    """For an http(s) tracking URI, wait until the MLflow server answers, for SAM2_RETRY_BUDGET_S: a server
    restarting must not fail a promotion, nor MLflow's own retries (7, about 4 min) end in a raw
    MlflowException. Raises ServiceUnreachableError (one line naming the server, tries and seconds)."""
    if urlparse(uri).scheme in ("http", "https"):
        wait_for_http_service(
            uri,
            service="MLflow tracking server",
            what="connecting to the model registry",
            hint="Is the server running and MLFLOW_TRACKING_URI right? Locally: unset it (SQLite under .local/)",
        )


class MlflowModelRegistry:
    """`ModelRegistry` on MLflow: SQLite locally, a tracking server URI on a cluster."""

    def __init__(
        self,
        registry_uri: str,
        lock_dir: str | os.PathLike[str] | None = None,
        lease_s: float = 120.0,
        settle_s: float = 0.5,
        lock_timeout_s: float = 600.0,
    ) -> None:
        from mlflow import MlflowClient

        wait_for_tracking_server(registry_uri)
        self.registry_uri = registry_uri
        self.client = MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
        self._lock_file = _local_lock_file(registry_uri, lock_dir)
        self.lease_s = lease_s
        self.settle_s = settle_s
        self.lock_timeout_s = lock_timeout_s

    # -- public -----------------------------------------------------------------------------------------

    def register_and_promote(
        self,
        candidate: Candidate,
        margin: float,
        allow_random_init: bool = False,
        gate_checks: Sequence[GateCheck] = (),
        gate_settings: GateSettings | None = None,
    ) -> PromotionResult:
        """Register `candidate` as a new version and give it `champion` or `challenger` (see `choose`);
        a failed check of the gate against the starting point (sam2.promotion.gate) keeps it challenger,
        and every check is tagged on the version.

        Raises ValueError for a candidate without the primary metric or with a non-S3 source, and
        TimeoutError when another run holds the promotion lock for longer than `lock_timeout_s`.
        """
        if PRIMARY_METRIC not in candidate.metrics:
            raise ValueError(f"candidate metrics have no {PRIMARY_METRIC!r}: {sorted(candidate.metrics)}")
        if any(urlparse(u).scheme != "s3" for u in (candidate.checkpoint_uri, candidate.source_uri) if u):
            raise ValueError(
                f"checkpoint URI {candidate.checkpoint_uri!r} is not an s3:// URI; upload the checkpoint "
                "to object storage first so every cluster and laptop can load the registered version"
            )
        if margin < 0:
            raise ValueError(f"promotion margin must be >= 0, got {margin}")
        name = model_name_for(candidate.dataset_name)
        with self._locked(name):
            version = self._register(name, candidate)
            result = self._promote(
                name, version, candidate, margin, allow_random_init, gate_checks, gate_settings
            )
        logger.info(
            "registered %s version %s (J&F %.2f): %s by rule %s: %s",
            name,
            result.version,
            result.score,
            result.decision,
            result.rule,
            result.reason,
        )
        return result

    def champion(self, dataset_name: str) -> tuple[str, float] | None:
        """(version, J&F) of the current champion, or None."""
        return self._alias_score(model_name_for(dataset_name), CHAMPION)

    def champion_details(self, dataset_name: str) -> ChampionInfo | None:
        """The current champion of `sam2-<dataset_name>` with its checkpoint and config, or None."""
        return self._champion_info(model_name_for(dataset_name))

    # -- steps ------------------------------------------------------------------------------------------

    def _register(self, name: str, candidate: Candidate) -> str:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            with contextlib.suppress(MlflowException):  # another run may have created it meanwhile
                self.client.create_registered_model(
                    name, description=f"SAM 2 fine-tuned on data set {candidate.dataset_name!r}"
                )
        tags = {
            "dataset_name": candidate.dataset_name,
            "dataset_version": candidate.dataset_version,
            "config": candidate.config,
            "code_version": candidate.code_version,
            "pipeline_run": candidate.pipeline_run,
            "checkpoint_uri": candidate.checkpoint_uri,
            "model_config": candidate.model_config,
            "random_init": str(candidate.random_init).lower(),
            **{metric_tag(k): f"{float(v):.6f}" for k, v in candidate.metrics.items()},
            **_head_to_head_tags(candidate.head_to_head),
            **candidate.extra_tags,
        }
        mv = self.client.create_model_version(
            name,
            source=candidate.source_uri or candidate.checkpoint_uri,
            run_id=candidate.run_id,
            tags=tags,
            description=f"J&F {float(candidate.metrics[PRIMARY_METRIC]):.2f} on the validation split",
        )
        return str(mv.version)

    def _promote(
        self,
        name: str,
        version: str,
        candidate: Candidate,
        margin: float,
        allow_random_init: bool,
        gate_checks: Sequence[GateCheck] = (),
        gate_settings: GateSettings | None = None,
    ) -> PromotionResult:
        score = float(candidate.metrics[PRIMARY_METRIC])
        current = self._champion_info(name)
        prev_version = current.version if current else None
        choice = apply_gate(choose(candidate, current, margin, allow_random_init), gate_checks)
        decision = choice.decision
        self.client.set_registered_model_alias(name, decision, version)
        if decision == CHAMPION:
            # Compare-and-set re-check: if another run moved the champion after our write (possible only
            # with a lost lease), its write stands and this version steps back, so two champions never stand.
            now = self._alias_score(name, CHAMPION)
            if now is None or now[0] != version:
                decision = CHALLENGER
                self.client.set_registered_model_alias(name, CHALLENGER, version)
        self.client.set_model_version_tag(name, version, "promotion", decision)
        self.client.set_model_version_tag(name, version, "promotion_rule", choice.rule)
        self.client.set_model_version_tag(name, version, "promotion_reason", choice.reason[:4900])
        if gate_checks:
            for key, value in gate_tags(gate_checks, gate_settings or GateSettings()).items():
                self.client.set_model_version_tag(name, version, key, value)
        return PromotionResult(
            name,
            version,
            decision,
            score,
            prev_version,
            choice.compared_score,
            margin,
            choice.rule,
            choice.reason,
        )

    def _champion_info(self, name: str) -> ChampionInfo | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            return None
        found = self._alias_score(name, CHAMPION)
        if found is None:  # the alias moved away between the two reads
            return None
        return ChampionInfo(
            model_name=name,
            version=str(mv.version),
            score=found[1],
            checkpoint_uri=mv.tags.get("checkpoint_uri") or (mv.source if mv.source.endswith(".pt") else ""),
            model_config=mv.tags.get("model_config", ""),
            dataset_version=mv.tags.get("dataset_version", ""),
            run_id=mv.run_id or None,
        )

    def _alias_score(self, name: str, alias: str) -> tuple[str, float] | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None
        raw = mv.tags.get(metric_tag(PRIMARY_METRIC))
        if raw is None:
            raise ValueError(
                f"{alias} version {mv.version} of {name!r} has no tag {metric_tag(PRIMARY_METRIC)}; "
                "set it (in percent) or move the alias away before promoting"
            )
        return str(mv.version), float(raw)

    # -- locking ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        if self._lock_file is not None:
            with exclusive_file_lock(self._lock_file, self.lock_timeout_s):
                yield
        else:
            with self._tag_lease(name):
                yield

    @contextlib.contextmanager
    def _tag_lease(self, name: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):
            self.client.create_registered_model(name)
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            holder = self.client.get_registered_model(name).tags.get(LOCK_TAG)
            if _lease_free(holder):
                try:
                    self.client.set_registered_model_tag(
                        name, LOCK_TAG, f"{owner} {time.time() + self.lease_s}"
                    )
                except MlflowException as exc:
                    # Two first writers of the tag race on the store's unique key (SQL stores insert a
                    # missing tag): the loser sees an integrity error. That is contention, not failure.
                    logger.debug("promotion lease write on %r lost a race: %s", name, exc)
                else:
                    time.sleep(self.settle_s)
                    holder = self.client.get_registered_model(name).tags.get(LOCK_TAG, "")
                    if holder.split(" ")[0] == owner:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"registered model {name!r} stayed locked by {holder!r} for {self.lock_timeout_s}s; if no "
                    f"promotion is running, delete its tag {LOCK_TAG!r}"
                )
            time.sleep(self.settle_s * (1 + uuid.uuid4().int % 100 / 100))
        try:
            yield
        finally:
            holder = self.client.get_registered_model(name).tags.get(LOCK_TAG, "")
            if holder.split(" ")[0] == owner:
                self.client.delete_registered_model_tag(name, LOCK_TAG)


def _head_to_head_tags(h2h: HeadToHead | None) -> dict[str, str]:
    """The scores of this run's comparison as version tags (what the decision was measured on)."""
    if h2h is None:
        return {}
    tags = {
        "h2h.dataset_version": h2h.dataset_version,
        "h2h.num_videos": str(h2h.num_videos),
        "h2h.new_J_and_F": f"{h2h.new_score:.6f}",
    }
    if h2h.champion_version is not None and h2h.champion_score is not None:
        tags["h2h.champion_version"] = h2h.champion_version
        tags["h2h.champion_J_and_F"] = f"{h2h.champion_score:.6f}"
    if h2h.unscored_reason:
        tags["h2h.champion_unscored"] = h2h.unscored_reason[:4900]
    if h2h.baseline_score is not None:
        tags["h2h.baseline_J_and_F"] = f"{h2h.baseline_score:.6f}"
    return tags


def _lease_free(holder: str | None) -> bool:
    if not holder:
        return True
    try:
        return float(holder.split(" ")[1]) < time.time()
    except (IndexError, ValueError):
        return True


def _local_lock_file(registry_uri: str, lock_dir: str | os.PathLike[str] | None) -> Path | None:
    """The lock file for a store on this machine (SQLite or file), None for a remote server."""
    if lock_dir is not None:
        return Path(lock_dir) / "promotion.lock"
    parsed = urlparse(registry_uri)
    if parsed.scheme == "sqlite":
        db = registry_uri.split("sqlite:///", 1)[-1]
        return Path(db).with_name(Path(db).name + ".promotion.lock")
    if parsed.scheme in ("", "file"):
        return Path(parsed.path or registry_uri) / ".promotion.lock"
    return None
