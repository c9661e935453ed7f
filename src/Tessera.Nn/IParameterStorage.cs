using Tessera.Tensors;

namespace Tessera.Nn;

/// <summary>
/// Where the tensors of a model's parameters live. A <see cref="ParameterArena"/> holds every parameter whole in one
/// value, gradient (and, for 16-bit models, F32 master) buffer; a fully sharded data-parallel strategy (ZeRO-3) holds
/// shards and binds each unit's parameters to gathered buffers while a pass needs them. Layers never see which: they
/// read <see cref="Parameter.Value"/> and <see cref="Parameter.Grad"/> at use, which ask the storage attached to the
/// model's <see cref="ParameterLayout"/>.
/// </summary>
public interface IParameterStorage
{
    /// <summary>Backend holding the tensors.</summary>
    IBackend Backend { get; }

    /// <summary>Element type of values and gradients (what the layers read and write).</summary>
    DType DType { get; }

    /// <summary>The value of <paramref name="parameter"/>; throws, naming it, when the storage does not hold it now.</summary>
    Tensor Value(Parameter parameter);

    /// <summary>The gradient of <paramref name="parameter"/>; throws, naming it, when no gradient buffer is bound now.</summary>
    Tensor Grad(Parameter parameter);

    /// <summary>The F32 master beside a 16-bit value, or null when the value is its own master (F32, F64) or the master lives elsewhere.</summary>
    Tensor? Master(Parameter parameter);

    /// <summary>
    /// The tensor holding the authoritative value (the master when there is one, else the value); throws when the master
    /// lives elsewhere (an offloaded optimizer holds it), so that nothing writes a rounded copy in its place.
    /// </summary>
    Tensor Authoritative(Parameter parameter);

    /// <summary>
    /// Calls <paramref name="read"/> with a tensor holding <paramref name="parameter"/>'s authoritative value at master precision
    /// (the F32 master under mixed precision, else the value) and returns its result. The tensor is valid during the call only:
    /// a split master (<see cref="MasterWeights.Split"/>) is joined into a transient one. Throws where <see cref="Authoritative"/> does.
    /// </summary>
    T ReadAuthoritative<T>(Parameter parameter, Func<Tensor, T> read) => read(Authoritative(parameter));

    /// <summary>
    /// Calls <paramref name="write"/> to fill a tensor that becomes <paramref name="parameter"/>'s authoritative value (the F32
    /// master under mixed precision, else the value), then brings the value the layers read in line: cast from a separate master,
    /// split from a transient one under <see cref="MasterWeights.Split"/>. Throws where <see cref="Authoritative"/> does.
    /// </summary>
    void WriteAuthoritative(Parameter parameter, Action<Tensor> write)
    {
        write(Authoritative(parameter));
        if (Master(parameter) is { } master) Backend.Copy(master, Value(parameter));
    }

    /// <summary>
    /// <paramref name="parameter"/>'s weight as int8 with row scales when the storage keeps it so (weight-only quantization,
    /// <see cref="Quantization.QuantizedParameterStorage"/>; its <see cref="Value"/> then throws), else null: the default.
    /// </summary>
    QuantizedWeight? Quantized(Parameter parameter) => null;

    /// <summary>
    /// Gives <paramref name="parameter"/>'s quantized weight the input order <paramref name="order"/> (stored column j holds input
    /// <c>order[j]</c>, <see cref="QuantizedWeight.InputOrder"/>: a GPTQ act-order checkpoint's columns kept as they are stored),
    /// or takes it away (null). Only a storage that keeps quantized weights has one to give; the default refuses.
    /// </summary>
    void SetQuantizedInputOrder(Parameter parameter, int[]? order) => throw new InvalidOperationException(
        $"parameter '{parameter.Name}' is not held quantized, so its weight has no stored column order to set");

    /// <summary>Whether <see cref="Value"/> would succeed now.</summary>
    bool IsResident(Parameter parameter);

    /// <summary>Whether <see cref="Grad"/> would succeed now.</summary>
    bool HasGradient(Parameter parameter);

    /// <summary>
    /// Whether <paramref name="parameter"/> is trained at all: false for a frozen storage (the base model under LoRA), whose
    /// parameters have no gradient buffer, so layers skip their weight-gradient products. True by default.
    /// </summary>
    bool RequiresGradient(Parameter parameter) => true;
}
