"""Output folders of the CLI commands: nothing is left behind by a command that fails before it produced anything.

A run that stops on bad input (a missing data path, an all-corrupt folder, a damaged tokenizer) must not leave an
empty run directory, a ``train_config.json`` or an ``extraction.json`` behind: they would make the corrected command
refuse to run ("holds a run with a different recipe") or look like a started run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def removed_on_failure(path: str | os.PathLike, keep_if: Callable[[Path], bool] = lambda _: False) -> Iterator[None]:
    """On any exception inside the block, remove what the block created under ``path``, then re-raise.

    Entries of ``path`` that existed before the block are never touched; ``path`` itself is removed only when the
    block created it. Nothing is removed when ``keep_if(path)`` is true (the command produced something worth keeping,
    e.g. a checkpoint or a finished shard, from which running the command again resumes), or on ranks other than 0
    under torchrun.
    """
    path = Path(path)
    existed = path.exists()
    before = set(os.listdir(path)) if existed and path.is_dir() else set()
    try:
        yield
    except BaseException:
        if int(os.environ.get("RANK", "0")) == 0 and path.is_dir() and not keep_if(path):
            if not existed:
                shutil.rmtree(path, ignore_errors=True)
            else:
                for name in set(os.listdir(path)) - before:
                    entry = path / name
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
            log.debug("removed the outputs of the failed command under %s", path)
        raise
