using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// Expert parallelism: the all-to-all token dispatcher (Megatron-Core's MoEAlltoAllTokenDispatcher, written for host routing).
/// Each rank routes its own N tokens as on one device; the rows it sends, S of them, are its tokens gathered in global expert
/// order (expert e's tokens ascending, then e + 1's), which is also rank order of the experts' holders, so each holder's rows are
/// one contiguous block. The forward exchanges per-expert counts first (an all-to-all of one (E/ep) row per peer), then the rows
/// (all-to-all of split sizes), runs the rank's experts on the R rows it received (each expert gathers its rows from every
/// source, in source order), sends each result row back to its token's rank with the conjugate all-to-all (so the returned rows
/// lie in the sent order), and combines there exactly as one device does (weights and scatter-add in expert order). The weights
/// never travel: the token's rank scales the returned rows and computes the weights' gradients. The backward runs the conjugate
/// exchanges in reverse: w·dy to the experts, their input gradients back. Four all-to-alls forward (counts, rows, results)
/// and two backward, every rank joining each, with or without rows to move.
/// </summary>
public sealed partial class SparseMoeFeedForward
{
    /// <summary>The dispatcher's buffers: (S, C) rows sent, (R, C) received, counts (ep, E/ep) I32.</summary>
    private sealed class ExpertDispatchKeys(string name)
    {
        public ActivationKey SendIds { get; } = new(name + ".dispatch.send_ids");           // (S) I32: token of each sent row
        public ActivationKey Send { get; } = new(name + ".dispatch.send");                  // (S, C)
        public ActivationKey Counts { get; } = new(name + ".dispatch.counts");              // (ep, E/ep) I32: rows for each expert
        public ActivationKey ReceivedCounts { get; } = new(name + ".dispatch.received_counts");   // (ep, E/ep) I32: from each source, per local expert
        public ActivationKey Received { get; } = new(name + ".dispatch.received");          // (R, C)
        public ActivationKey Results { get; } = new(name + ".dispatch.results");            // (R, C): the experts' outputs in received order
        public ActivationKey Returned { get; } = new(name + ".dispatch.returned");          // (S, C): the results back, in sent order
        public ActivationKey DSend { get; } = new(name + ".dispatch.dsend");                // (S, C): w · dy of each sent row
        public ActivationKey DReceived { get; } = new(name + ".dispatch.dreceived");        // (R, C)
        public ActivationKey DReceivedIn { get; } = new(name + ".dispatch.dreceived_in");   // (R, C): the experts' input gradients
        public ActivationKey DReturned { get; } = new(name + ".dispatch.dreturned");        // (S, C)
    }

    /// <summary>
    /// One pass's exchange, known on the host after routing and the count exchange: rows sent to each rank and received from
    /// each, where expert e's rows start among the sent ones, and which received rows are each local expert's (ascending).
    /// </summary>
    private sealed record ExchangePlan(int[] SendSplits, int[] ReceiveSplits, int[] SendOffsets, int[][] LocalRows)
    {
        public int Sent => SendSplits.Sum();
        public int Received => ReceiveSplits.Sum();
    }

    private ExchangePlan Plan(ExpertRouting routing, int[] receivedCounts)
    {
        int ranks = ExpertParallelism!.Size, local = Experts.Count;
        var sendSplits = new int[ranks];
        var offsets = new int[ExpertCount];
        int at = 0;
        for (int e = 0; e < ExpertCount; e++)
        {
            offsets[e] = at;
            at += routing.TokensOf(e).Length;
            sendSplits[e / local] += routing.TokensOf(e).Length;
        }
        var receiveSplits = new int[ranks];
        var rows = Enumerable.Range(0, local).Select(_ => new List<int>()).ToArray();
        int row = 0;
        for (int s = 0; s < ranks; s++)                               // received order: by source, then by local expert
            for (int j = 0; j < local; j++)
            {
                int count = receivedCounts[s * local + j];
                receiveSplits[s] += count;
                for (int i = 0; i < count; i++) rows[j].Add(row++);
            }
        return new ExchangePlan(sendSplits, receiveSplits, offsets, rows.Select(r => r.ToArray()).ToArray());
    }

    /// <summary>The forward's dispatch, local experts and combine into <paramref name="output"/> (N, C) for the rows <paramref name="x"/> (N, C).</summary>
    private void RunExpertParallel(in PassContext ctx, Tensor x, Tensor output, ExpertRouting routing)
    {
        var ep = ExpertParallelism!;
        var backend = x.Backend;
        int c = x.Size(1), local = Experts.Count;
        // 1. Counts: rank s learns how many rows each source sends each of its experts.
        var counts = ctx.Buffer(_dispatch.Counts, new Shape(ep.Size, local), DType.I32);                    // (ep, E/ep)
        backend.CopyFromHost<int>(Enumerable.Range(0, ExpertCount).Select(e => routing.TokensOf(e).Length).ToArray(), counts);
        var receivedCounts = ctx.Buffer(_dispatch.ReceivedCounts, new Shape(ep.Size, local), DType.I32);    // (ep, E/ep)
        var ones = Enumerable.Repeat(1, ep.Size).ToArray();
        ep.Group.AllToAll(counts, receivedCounts, ones, ones).Wait();
        ctx.Save(_dispatch.ReceivedCounts, receivedCounts);
        var plan = Plan(routing, backend.ToArray<int>(receivedCounts));
        // 2. Rows: this rank's tokens in global expert order, to their experts' holders.
        var sendIds = ctx.Buffer(_dispatch.SendIds, new Shape(plan.Sent), DType.I32);                    // (S)
        var send = ctx.Buffer(_dispatch.Send, new Shape(plan.Sent, c), x.DType);                          // (S, C)
        if (plan.Sent > 0)
        {
            backend.CopyFromHost<int>(Enumerable.Range(0, ExpertCount).SelectMany(e => routing.TokensOf(e).ToArray()).ToArray(), sendIds);
            backend.EmbeddingForward(sendIds, x, send);
        }
        var received = ctx.Buffer(_dispatch.Received, new Shape(plan.Received, c), x.DType);              // (R, C)
        ep.Group.AllToAll(send, received, plan.SendSplits, plan.ReceiveSplits).Wait();
        // 3. The rank's experts, each on its rows from every source; results in received order.
        var results = ctx.Buffer(_dispatch.Results, new Shape(plan.Received, c), x.DType);               // (R, C)
        if (plan.Received > 0) backend.Fill(results, 0);
        for (int j = 0; j < local; j++)
        {
            int count = plan.LocalRows[j].Length, e = FirstExpert + j;
            if (count == 0) continue;                                // no rank routed a token here: the expert rests
            var ids = ctx.Buffer(_localIds[e], new Shape(count), DType.I32);                             // (r_j): its received rows
            backend.CopyFromHost<int>(plan.LocalRows[j], ids);
            var rows = ctx.Buffer(_rows[e], new Shape(count, c), x.DType);                               // (r_j, C)
            backend.EmbeddingForward(ids, received, rows);
            var y = Experts[j].Forward(ctx, rows);                                                       // (r_j, C)
            backend.EmbeddingBackward(ids, y, results);              // results[ids] = y (each row once, into zeros)
            ctx.Save(_localIds[e], ids);
        }
        // 4. Results back: the conjugate exchange; they arrive in the sent order.
        var returned = ctx.Buffer(_dispatch.Returned, new Shape(plan.Sent, c), x.DType);                // (S, C)
        ep.Group.AllToAll(results, returned, plan.ReceiveSplits, plan.SendSplits).Wait();
        ctx.Save(_dispatch.Returned, returned);
        // 5. Combine in expert order, as on one device: output[ids] += w · expert(x).
        for (int e = 0; e < ExpertCount; e++)
        {
            var tokens = routing.TokensOf(e);
            int count = tokens.Length;
            if (count == 0) continue;
            var ids = ctx.Buffer(_ids[e], new Shape(count), DType.I32);                                  // (n_e)
            backend.CopyFromHost<int>(tokens, ids);
            var w = ctx.Buffer(_weights[e], new Shape(count, 1, 1), x.DType);                            // (n_e, 1, 1)
            Upload(ctx, SlotValues(routing.Weights, routing.SlotsOf(e)), w);
            var scaled = ctx.Buffer(_scaled[e], new Shape(count, 1, c), x.DType);                        // (n_e, 1, C)
            backend.MatMul(w, returned.Slice(0, plan.SendOffsets[e], count).Reshape(count, 1, c), scaled);
            backend.EmbeddingBackward(ids, scaled.Reshape(count, c), output);
            ctx.Save(_ids[e], ids);
            ctx.Save(_weights[e], w);
        }
    }

    /// <summary>The conjugate of <see cref="RunExpertParallel"/>: fills <paramref name="weightGradients"/> (N, k) and adds the experts' input gradients to <paramref name="dx"/> (N, C).</summary>
    private void BackwardExpertParallel(in PassContext ctx, Tensor dy, Tensor dx, ExpertRouting routing, double[] weightGradients)
    {
        var ep = ExpertParallelism!;
        var backend = dy.Backend;
        int c = dy.Size(1), local = Experts.Count;
        var plan = Plan(routing, backend.ToArray<int>(ctx.Get(_dispatch.ReceivedCounts)));
        var returned = ctx.Get(_dispatch.Returned);                                                      // (S, C)
        // 1. At the tokens' rank: dL/dw = dy · expert(x), and w · dy for each sent row, in sent order.
        var dSend = ctx.Scratch(_dispatch.DSend, new Shape(plan.Sent, c), dy.DType);                     // (S, C)
        for (int e = 0; e < ExpertCount; e++)
        {
            var slots = routing.SlotsOf(e);
            int count = slots.Length;
            if (count == 0) continue;
            var ids = ctx.Get(_ids[e]);                                                                  // (n_e)
            var w = ctx.Get(_weights[e]);                                                                // (n_e, 1, 1)
            var dRows = ctx.Scratch(_dRows[e], new Shape(count, 1, c), dy.DType);                        // (n_e, 1, C)
            backend.EmbeddingForward(ids, dy, dRows.Reshape(count, c));
            var dots = ctx.Scratch(_dots, new Shape(count, 1, 1), dy.DType);                             // (n_e, 1, 1)
            backend.MatMul(dRows, returned.Slice(0, plan.SendOffsets[e], count).Reshape(count, 1, c), dots, transposeB: true);
            var host = Download(ctx, dots);
            for (int i = 0; i < count; i++) weightGradients[slots[i]] = host[i];
            backend.MatMul(w, dRows, dSend.Slice(0, plan.SendOffsets[e], count).Reshape(count, 1, c));
        }
        // 2. To the experts (the conjugate of the results' return).
        var dReceived = ctx.Scratch(_dispatch.DReceived, new Shape(plan.Received, c), dy.DType);         // (R, C)
        ep.Group.AllToAll(dSend, dReceived, plan.SendSplits, plan.ReceiveSplits).Wait();
        // 3. The rank's experts' backward; their input gradients in received order.
        var dReceivedIn = ctx.Scratch(_dispatch.DReceivedIn, new Shape(plan.Received, c), dy.DType);     // (R, C)
        if (plan.Received > 0) backend.Fill(dReceivedIn, 0);
        for (int j = 0; j < local; j++)
        {
            int count = plan.LocalRows[j].Length, e = FirstExpert + j;
            if (count == 0) continue;                                // no token anywhere chose it: no gradient
            var ids = ctx.Get(_localIds[e]);                                                             // (r_j)
            var dOut = ctx.Scratch(_dScaled[e], new Shape(count, c), dy.DType);                          // (r_j, C)
            backend.EmbeddingForward(ids, dReceived, dOut);
            var dIn = ctx.Scratch(_dExpertIn[e], new Shape(count, c), dy.DType);                         // (r_j, C)
            Experts[j].Backward(ctx, dOut, dIn);
            backend.EmbeddingBackward(ids, dIn, dReceivedIn);
        }
        // 4. Back to the tokens' ranks (the conjugate of the dispatch), added to dx in expert order as on one device.
        var dReturned = ctx.Scratch(_dispatch.DReturned, new Shape(plan.Sent, c), dy.DType);             // (S, C)
        ep.Group.AllToAll(dReceivedIn, dReturned, plan.ReceiveSplits, plan.SendSplits).Wait();
        for (int e = 0; e < ExpertCount; e++)
        {
            int count = routing.SlotsOf(e).Length;
            if (count == 0) continue;
            backend.EmbeddingBackward(ctx.Get(_ids[e]), dReturned.Slice(0, plan.SendOffsets[e], count), dx);
        }
    }
}
