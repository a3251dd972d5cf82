// MoEModels module
