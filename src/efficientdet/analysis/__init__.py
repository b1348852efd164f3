"""Dataset analysis: the dataset doctor (``efficientdet data check``) and anchor fitting.

Reads datasets through :mod:`efficientdet.data` and anchors from :mod:`efficientdet.detection`;
``data`` itself never imports ``detection``.
"""
