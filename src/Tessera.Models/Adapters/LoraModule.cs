namespace Tessera.Models.Adapters;

/// <summary>A LoRA adapter served unmerged under its own model name (<c>tessera serve --lora NAME=DIR</c>).</summary>
/// <param name="Name">The model name requests give to use it.</param>
/// <param name="Directory">The PEFT adapter directory (adapter_config.json and adapter_model.safetensors).</param>
public sealed record LoraModule(string Name, string Directory);
