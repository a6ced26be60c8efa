"""The CLI's logging: the package's INFO lines reach standard output, once."""

from __future__ import annotations

import logging

from jointseg.workflows.console import configure_logging


def test_package_info_lines_reach_stdout_once(capsys, monkeypatch):
    logger = logging.getLogger("jointseg")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logger.level)
    configure_logging()
    configure_logging()
    logging.getLogger("jointseg.workflows.train").info("[train] run folder: %s", "RUN")
    logging.getLogger("jointseg.data.cache").debug("not shown")
    assert capsys.readouterr().out == "[train] run folder: RUN\n"


def test_lines_inside_a_tqdm_redirect_are_shown_once(capsys, monkeypatch):
    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger("jointseg")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logger.level)
    configure_logging()
    with logging_redirect_tqdm([logger]):
        configure_logging()  # as a command's error wrapper does inside the redirect
        logging.getLogger("jointseg.inference.predict").info("[predict] case: knee")
    assert capsys.readouterr().out == "[predict] case: knee\n"
