"""The lite profile's tools: small real CPU models (YAMNet, YOLOX-nano, DeepLabV3) and the tag-embedding scorer."""
