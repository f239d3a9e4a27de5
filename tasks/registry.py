"""The MLflow model registry: who is champion, and moving the aliases."""

from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException

from tasks import tracking

log = logging.getLogger(__name__)
CHAMPION = "champion"
PREVIOUS = "previous"
CHALLENGER = "challenger"


def alias_version(model: str, alias: str) -> str | None:
    """The version behind `alias`, or None when the alias (or the model) does not exist."""
    try:
        return str(tracking.client().get_model_version_by_alias(model, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def champion_version(model: str) -> str | None:
    """The version behind alias `champion`, or None when there is none yet."""
    return alias_version(model, CHAMPION)


def version_tags(model: str, version: str) -> dict[str, str]:
    return dict(tracking.client().get_model_version(model, version).tags)


def promote(model: str, version: str) -> dict[str, str | None]:
    """Make `version` the champion; the former champion keeps alias `previous`. Idempotent."""
    client = tracking.client()
    current = champion_version(model)
    if current == version:
        log.info("version %s of %s is already the champion", version, model)
        return {"champion": version, "previous": None, "changed": "no"}
    if current is not None:
        client.set_registered_model_alias(model, PREVIOUS, current)
    # Last and alone: this one call changes what the serving container follows.
    client.set_registered_model_alias(model, CHAMPION, version)
    log.info("promoted %s version %s to champion (previous: %s)", model, version, current)
    return {"champion": version, "previous": current, "changed": "yes"}


def mark_challenger(model: str, version: str) -> None:
    """A candidate that did not pass keeps alias `challenger` (for shadow scoring later)."""
    tracking.client().set_registered_model_alias(model, CHALLENGER, version)
