"""The one exception type for bad user input, shared by the stages and the CLI."""


class UserError(Exception):
    """Bad input from the user (a file, a value): reported as one line per problem, exit code 2."""
