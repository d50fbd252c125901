"""Helpers the tests share (launching ranks, Horovod's launcher for tests, image and COCO
fixtures); no tests in here."""
