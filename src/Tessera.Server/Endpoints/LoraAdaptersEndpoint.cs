using Microsoft.AspNetCore.Http;
using Tessera.Inference.Serving;
using Tessera.Server.Contracts;

namespace Tessera.Server.Endpoints;

/// <summary>
/// POST /v1/load_lora_adapter {"lora_name", "lora_path"} and POST /v1/unload_lora_adapter {"lora_name"}, as vLLM serves them:
/// mapped only with <see cref="ServeOptions.EnableLoraLoading"/>. Success is 200 with a line of text (vLLM's reply); every refusal
/// an OpenAI error object: 400 for a malformed body or an adapter that does not fit (nothing changes), 404 for an unknown name to
/// unload, 409 for a name served already or no free slot. An unloaded adapter's running requests finish first
/// (<see cref="InferenceEngine.UnloadAdapter"/>).
/// </summary>
internal sealed class LoraAdaptersEndpoint(InferenceEngine engine, ServeOptions options)
{
    public async Task LoadAsync(HttpContext context)
    {
        var body = await RequestBody.ReadAsync(context, ServerJsonContext.Default.LoadLoraAdapterRequestBody).ConfigureAwait(false);
        string name = Required(body.LoraName, "lora_name"), path = Required(body.LoraPath, "lora_path");
        if (name == options.ModelName)
            throw new ApiException(new ApiError(StatusCodes.Status409Conflict, $"'{name}' is the served base model's name; load the adapter under another name",
                "invalid_request_error", "lora_name", "conflict"));
        try
        {
            await engine.LoadAdapterAsync(name, path, context.RequestAborted).ConfigureAwait(false);
        }
        catch (LoraAdapterException e)
        {
            throw new ApiException(ErrorOf(e, "lora_path"));
        }
        await Results.Text($"Success: LoRA adapter '{name}' added successfully.").ExecuteAsync(context).ConfigureAwait(false);
    }

    public async Task UnloadAsync(HttpContext context)
    {
        var body = await RequestBody.ReadAsync(context, ServerJsonContext.Default.UnloadLoraAdapterRequestBody).ConfigureAwait(false);
        string name = Required(body.LoraName, "lora_name");
        try
        {
            engine.UnloadAdapter(name);
        }
        catch (LoraAdapterException e)
        {
            throw new ApiException(ErrorOf(e, "lora_name"));
        }
        await Results.Text($"Success: LoRA adapter '{name}' removed successfully.").ExecuteAsync(context).ConfigureAwait(false);
    }

    private static string Required(string? value, string field) => string.IsNullOrWhiteSpace(value)
        ? throw new ApiException(ApiError.Invalid($"you must provide '{field}'", field, "missing_required_parameter"))
        : value;

    private static ApiError ErrorOf(LoraAdapterException e, string param) => e.Error switch
    {
        LoraAdapterError.NotFound => new ApiError(StatusCodes.Status404NotFound, e.Message, "invalid_request_error", "lora_name", "model_not_found"),
        LoraAdapterError.Conflict => new ApiError(StatusCodes.Status409Conflict, e.Message, "invalid_request_error", "lora_name", "conflict"),
        _ => ApiError.Invalid(e.Message, param),
    };
}
