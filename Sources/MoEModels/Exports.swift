// The models' API is written in ModelFormats' types (configs, weight sources, the expert
// provider seam and its weight types, which sit below this module so that expert caches need
// not import the models): importing the models brings them.
@_exported import ModelFormats
