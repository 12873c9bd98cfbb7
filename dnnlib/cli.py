"""Running a click command the project's way: any bad input ends in one ``error: ...`` line and exit code 2."""

import click


def run(command, argv=None, prog_name=None, user_errors=()):
    """Run ``command`` and return its exit code. ``user_errors`` are exception types whose message is shown as is
    (exit code 2, or the exception's ``exit_code`` when it carries one, as a failed rank of a distributed job does);
    click's usage errors and OS errors (a file that cannot be read or written) are reported the same way."""
    try:
        result = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except tuple(user_errors) as e:
        click.echo(f'error: {e}', err=True)
        return getattr(e, 'exit_code', 2)
    except click.ClickException as e:
        click.echo(f'error: {e.format_message()}', err=True)
        return 2
    except click.Abort:
        click.echo('error: aborted', err=True)
        return 130
    except OSError as e:
        where = e.filename if e.filename is not None else 'output'
        click.echo(f'error: {where}: {e.strerror or e}', err=True)
        return 2
    return result if isinstance(result, int) else 0
