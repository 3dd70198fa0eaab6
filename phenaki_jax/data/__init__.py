"""Data: procedural Shapes (shapes.py), real files (media.py decodes, sources.py reads webdataset
shards, WebVid-style indexes and TFDS), seqio tasks/mixtures over both (tasks.py), the
step-indexed batch pipeline the trainers use (pipeline.py), pre-tokenised batches
(pretokenized.py), video writers (video_io.py) and the real-footage test fixture (fixture.py).

Only the seqio layer of tasks.py, TFDS sources and gs:// paths import TensorFlow, and only when
used; importing this package is cheap.
"""
