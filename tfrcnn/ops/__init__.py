"""Pure TensorFlow detection ops: boxes, anchors, assignment, sampling, NMS, RoIAlign/RoIPool, masks.

Every op is batched and static-shape friendly. Boxes are [y1, x1, y2, x2] float32 in absolute pixels;
each docstring names the frame its boxes are in.
"""
