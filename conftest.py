"""Root conftest: loads every ``fusion_testing.fixtures_*`` module as a plugin."""

import pkgutil

import fusion_testing

pytest_plugins = sorted(
    f"fusion_testing.{module.name}"
    for module in pkgutil.iter_modules(fusion_testing.__path__)
    if module.name.startswith("fixtures_")
)
