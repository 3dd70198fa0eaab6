"""Data: procedural Shapes (shapes.py), seqio tasks/mixtures (tasks.py), the step-indexed batch
pipeline the trainers use (pipeline.py) and video files (video_io.py).

Only tasks.py's seqio layer imports TensorFlow, and only when asked; importing this package is
cheap.
"""
