"""The exceptions the CLI turns into exit codes, shared by the stages and the CLI (no torch here)."""


class TrainingDiverged(Exception):
    """The loss became NaN or inf: the run stops (exit code 1); its last good checkpoint is kept."""


class UserError(Exception):
    """Bad input from the user (a file, a value): reported as one line per problem, exit code 2."""
