"""matcli: turn one trained model into many (MatQuant slicing, MatFormer extraction, MRL
truncation)."""

__version__ = "0.1.0"
