"""Publish an export folder on the Hugging Face Hub (``--push-to-hub OWNER/NAME``) with
``huggingface_hub``: the repository is created when missing, the folder uploaded in one commit.
The token is huggingface_hub's own (``HF_TOKEN``, or ``hf auth login``); none goes on the command
line. Once there, ``timm.create_model("hf-hub:OWNER/NAME", pretrained=True)`` loads the backbone.
"""

from __future__ import annotations

import os
from typing import Any

from visiontransfer.errors import ConfigError

FLAG = "--push-to-hub"


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hub model id (``owner/name``), else one line naming the flag."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        reason = " ".join(str(error).split())
        raise ConfigError(
            f"{FLAG}={repo_id!r} is not a Hub repository id ({reason}): use owner/name"
        ) from None
    if "/" not in repo_id:
        raise ConfigError(f"{FLAG}={repo_id!r}: name the owner too (owner/name, your user or organisation)")
    return repo_id


def push_to_hub(folder: str | os.PathLike[str], repo_id: str, private: bool = False, api: Any = None) -> str:
    """Upload ``folder`` to the model repository ``repo_id`` (created if missing).

    Args:
        folder: The export folder.
        repo_id: ``owner/name``.
        private: Create the repository private.
        api: A ``huggingface_hub.HfApi`` (default: a new one, with the token huggingface_hub finds).

    Returns:
        The URL of the upload's commit (or of the repository).

    Raises:
        ConfigError: the upload failed (offline, no token, no permission...): one line; the export
            folder is complete and can be uploaded later.
    """
    from huggingface_hub import HfApi

    hub = api if api is not None else HfApi()
    where = os.fspath(folder)
    try:
        hub.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        commit = hub.upload_folder(
            repo_id=repo_id, folder_path=where, repo_type="model", ignore_patterns=[".*"],
            commit_message=f"visiontransfer export: {os.path.basename(where.rstrip(os.sep))}",
        )  # fmt: skip
    except Exception as error:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise ConfigError(
            f"{FLAG}={repo_id!r}: the upload failed ({type(error).__name__}: {reason}); the export in "
            f"{where!r} is complete: upload it later with `hf upload {repo_id} {where}`"
        ) from None
    return str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}")
