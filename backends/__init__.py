"""Engine adapters, installed as `sandboxer.backends`; each is found through the
`sandboxer.backends` entry-point group and imports its SDK only when used."""
