"""Shell completion scripts for the ``fusion-client`` command, made from its argparse parser."""

from __future__ import annotations

import argparse
import shlex

__all__ = ["SHELLS", "command_words", "completion_script"]

SHELLS = ("bash", "zsh")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its actions there, and only there
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """The options, and the choices of positional arguments (``completion bash|zsh``)."""
    words = {option for action in parser._actions for option in action.option_strings}
    for action in parser._actions:
        positional = not action.option_strings and action.choices is not None
        if positional and not isinstance(action, argparse._SubParsersAction):
            words.update(str(choice) for choice in action.choices or ())
    return sorted(words)


def command_words(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], tuple[list[str], list[str]]]:
    """Each command path (``()``, ``("cases", "get")``...) -> (subcommands, options)."""
    children = _subparsers(parser)
    words = {path: (sorted(children), _options(parser))}
    for name, child in children.items():
        words.update(command_words(child, (*path, name)))
    return words


def _bash(prog: str, parser: argparse.ArgumentParser) -> str:
    function = "_" + prog.replace("-", "_")
    cases = []
    for path, (children, options) in sorted(command_words(parser).items()):
        key = "/".join(path)
        cases.append(
            f"        {shlex.quote(key)}) words={shlex.quote(' '.join(children + options))};;"
        )
    return f"""# {prog} completion for bash: eval "$({prog} completion bash)"
{function}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} path="" word words i
    local commands="|{"|".join(sorted("/".join(p) for p in command_words(parser)))}|"
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        [[ $word == -* ]] && continue
        if [[ $commands == *"|${{path:+$path/}}$word|"* ]]; then
            path=${{path:+$path/}}$word
        fi
    done
    case "$path" in
{chr(10).join(cases)}
        *) words="";;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    [[ $cur == -* || ${{#COMPREPLY[@]}} -gt 0 ]] || COMPREPLY=($(compgen -f -- "$cur"))
}}
complete -o default -F {function} {prog}
"""


def completion_script(shell: str, prog: str, parser: argparse.ArgumentParser) -> str:
    """The completion script of ``prog`` for ``shell`` (``bash`` or ``zsh``)."""
    if shell == "bash":
        return _bash(prog, parser)
    if shell == "zsh":
        # zsh runs bash completion functions through bashcompinit.
        return (
            f'# {prog} completion for zsh: eval "$({prog} completion zsh)"\n'
            "autoload -U +X bashcompinit && bashcompinit\n" + _bash(prog, parser)
        )
    raise ValueError(f"unknown shell {shell!r}: expected one of {', '.join(SHELLS)}")
