namespace Tessera.Distributed.InProcess;

/// <summary>Ranks issued different operations (or arguments) under one sequence number.</summary>
internal sealed class CollectiveMismatchException(string message) : Exception(message);
