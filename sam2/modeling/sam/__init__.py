"""SAM prompt encoder, mask decoder and their attention layers."""
