"""The exceptions the CLI turns into exit codes, shared by the stages and the CLI (no torch here)."""


class TrainingDiverged(Exception):
    """The loss became NaN or inf: the run stops (exit code 1); its last good checkpoint is kept."""


class UserError(Exception):
    """Bad input from the user (a file, a value): reported as one line per problem, exit code 2."""


class DiskFull(UserError):
    """The disk (or the file-size limit) ran out while writing: the run stops at once, exit code 2,
    with what was finished kept (every file is written under a temporary name, then renamed)."""


FULL = {28, 27, 122}  # errno ENOSPC, EFBIG, EDQUOT (Linux): writing cannot succeed until space is freed


def disk_full(path: object, exc: OSError) -> DiskFull:
    return DiskFull(
        f"{path}: the disk is full ({exc.strerror or exc}); free space and rerun: finished "
        "files are kept and the rerun continues from them"
    )
