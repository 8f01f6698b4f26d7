"""Data: COCO files, Model Garden TFRecords, the tf.data input pipeline, and the synthetic shapes dataset."""
