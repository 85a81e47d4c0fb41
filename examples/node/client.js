#!/usr/bin/env node
// A splitinfer client in Node.js, written only from the public proto and docs/api.md: it learns the model's
// inputs with FrontEndService.GetModelMetadata, plans a request with FrontEndService.Plan saying which codecs
// it can decode (the front-end keeps the plan and answers its id), sends the input tensor through
// FrontEndService.Infer under that plan id, and prints the outputs as JSON. It loads proto/ at run time with
// @grpc/proto-loader, so it needs no generated code.
//
//   cd examples/node && npm install
//   node client.js --address 127.0.0.1:50051 --model residual_cnn [--input input.json] [--uplink-mbps 100]
//
// The client runs no partition itself (it reports compute_flops 0), so the plan puts the whole model on the
// servers. --input is a JSON file {"data": [...]} of float32 values in the model's input shape (without it,
// zeros are sent). It decodes plain, fp16, bf16 and int8-affine payloads and no compression, and says so in
// DeviceState.accepted_lossy / accepted_lossless: every plan then keeps to those codecs.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const crypto = require("node:crypto");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");

function parseArgs(argv) {
  const args = { address: "", model: "", input: "", uplinkMbps: 100, timeoutMs: 30000 };
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${key} needs a value`);
    if (key === "--address") args.address = value;
    else if (key === "--model") args.model = value;
    else if (key === "--input") args.input = value;
    else if (key === "--uplink-mbps") args.uplinkMbps = Number(value);
    else if (key === "--timeout-ms") args.timeoutMs = Number(value);
    else throw new Error(`unknown option ${key}`);
  }
  if (!args.address || !args.model) {
    throw new Error("usage: client.js --address HOST:PORT --model NAME [--input FILE.json]");
  }
  return args;
}

function loadFrontEnd(address) {
  const definition = protoLoader.loadSync("splitinfer/v1/frontend.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(definition).splitinfer.v1;
  const limit = 64 * 1024 * 1024;
  return new v1.FrontEndService(address, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": limit,
    "grpc.max_send_message_length": limit,
  });
}

function call(client, method, request, deadlineMs) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + deadlineMs }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// Little-endian float32 bytes of an array of numbers.
function float32Bytes(values) {
  const buffer = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buffer.writeFloatLE(v, i * 4));
  return buffer;
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

// The float values of an output tensor message (encoded as the plan said).
function decodeTensor(tensor, payload) {
  const lossy = tensor.encoding ? tensor.encoding.lossy : "LOSSY_CODEC_NONE";
  const lossless = tensor.encoding ? tensor.encoding.lossless : "LOSSLESS_CODEC_NONE";
  if (!["LOSSLESS_CODEC_NONE", "LOSSLESS_CODEC_UNSPECIFIED"].includes(lossless)) {
    throw new Error(`output ${tensor.name} is compressed with ${lossless}; this example decodes uncompressed outputs`);
  }
  const count = tensor.shape.reduce((a, b) => a * b, 1);
  const values = new Array(count);
  if (lossy === "LOSSY_CODEC_NONE" || lossy === "LOSSY_CODEC_UNSPECIFIED") {
    if (tensor.dtype !== "DATA_TYPE_FLOAT32") throw new Error(`output ${tensor.name} is ${tensor.dtype}; expected float32`);
    for (let i = 0; i < count; i++) values[i] = payload.readFloatLE(i * 4);
  } else if (lossy === "LOSSY_CODEC_FP16") {
    for (let i = 0; i < count; i++) values[i] = halfToFloat(payload.readUInt16LE(i * 2));
  } else if (lossy === "LOSSY_CODEC_BF16") {
    const word = Buffer.alloc(4);
    for (let i = 0; i < count; i++) {
      word.writeUInt32LE(payload.readUInt16LE(i * 2) << 16 >>> 0, 0);
      values[i] = word.readFloatLE(0);
    }
  } else if (lossy === "LOSSY_CODEC_INT8_AFFINE") {
    const scale = tensor.encoding.scales[0];
    const zero = tensor.encoding.zero_points[0];
    for (let i = 0; i < count; i++) values[i] = (payload.readInt8(i) - zero) * scale;
  } else {
    throw new Error(`output ${tensor.name} uses ${lossy}, which this example does not decode`);
  }
  return values;
}

function infer(client, header, tensor, deadlineMs) {
  return new Promise((resolve, reject) => {
    const stream = client.Infer({ deadline: Date.now() + deadlineMs });
    const outputs = [];
    let current = null;
    let trace = null;
    const finish = () => {
      if (current) outputs.push(current);
      current = null;
    };
    stream.on("data", (message) => {
      if (message.kind === "tensor") {
        finish();
        current = { tensor: message.tensor, parts: [message.tensor.payload] };
      } else if (message.kind === "chunk") {
        if (!current || current.tensor.name !== message.chunk.name) {
          stream.cancel();
          reject(new Error(`chunk of ${message.chunk.name} without its tensor`));
          return;
        }
        current.parts.push(message.chunk.data);
      } else if (message.kind === "trace") {
        finish();
        trace = message.trace;
      }
    });
    stream.on("error", reject);
    stream.on("end", () => {
      finish();
      resolve({
        trace,
        outputs: outputs.map(({ tensor, parts }) => ({
          name: tensor.name,
          shape: tensor.shape,
          values: decodeTensor(tensor, Buffer.concat(parts)),
        })),
      });
    });
    stream.write({ header });
    stream.write({ tensor });
    stream.end();
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const client = loadFrontEnd(args.address);
  const device = {
    device_id: `node-${process.pid}`,
    device_class: "node-client",
    compute_flops: 0, // runs no partition: the whole model goes to the servers
    uplink_mbps: args.uplinkMbps,
    downlink_mbps: args.uplinkMbps,
    rtt_ms: 1,
    battery_percent: 100,
    charging: true,
    // What decodeTensor below can read: no compression, and these lossy steps.
    accepted_lossy: ["LOSSY_CODEC_NONE", "LOSSY_CODEC_FP16", "LOSSY_CODEC_BF16", "LOSSY_CODEC_INT8_AFFINE"],
    accepted_lossless: ["LOSSLESS_CODEC_NONE"],
  };
  const metadata = await call(client, "GetModelMetadata", { model: args.model }, args.timeoutMs);
  if (metadata.inputs.length !== 1 || metadata.inputs[0].dtype !== "DATA_TYPE_FLOAT32") {
    throw new Error(`this example sends one float32 input; ${args.model} takes ${JSON.stringify(metadata.inputs)}`);
  }
  const spec = metadata.inputs[0];
  const count = spec.shape.reduce((a, b) => a * b, 1);
  const data = args.input ? JSON.parse(fs.readFileSync(args.input, "utf8")).data : new Array(count).fill(0);
  if (data.length !== count) throw new Error(`${spec.name} takes ${count} values (shape ${spec.shape}), got ${data.length}`);
  const { plan } = await call(client, "Plan", { model: args.model, device, requirements: {} }, args.timeoutMs);
  const input = { name: spec.name, shape: spec.shape };
  const payload = float32Bytes(data);
  const tensor = {
    name: input.name,
    dtype: "DATA_TYPE_FLOAT32",
    shape: input.shape,
    encoding: { lossy: "LOSSY_CODEC_NONE", lossless: "LOSSLESS_CODEC_NONE" },
    payload_size_bytes: payload.length,
    payload,
  };
  // The front-end keeps the plan (and its route); the request names it by id and sends the plan's entry
  // tensors. An expired plan id answers FAILED_PRECONDITION (code 9): ask for a new plan then.
  if (!plan.entry_tensors.includes(input.name)) {
    throw new Error(`the plan reads ${JSON.stringify(plan.entry_tensors)}, not ${input.name}`);
  }
  const header = { request_id: crypto.randomUUID(), device, plan_id: plan.plan_id, timeout_ms: args.timeoutMs };
  const started = process.hrtime.bigint();
  const result = await infer(client, header, tensor, args.timeoutMs);
  const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
  console.log(
    JSON.stringify(
      {
        request_id: header.request_id,
        plan: `${plan.model}@${plan.variant} by ${plan.solver}: ${plan.reason}`,
        model_inputs: metadata.inputs.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })),
        variants: metadata.variants.map((v) => v.name),
        codecs: plan.crossings.map((c) => `${c.tensor_name}:${c.encoding.lossy}+${c.encoding.lossless}`),
        elapsed_ms: elapsedMs,
        server_ms: result.trace ? result.trace.server_ms : null,
        outputs: result.outputs,
      },
      null,
      1,
    ),
  );
  client.close();
}

main().catch((error) => {
  console.error(`error: ${error.details || error.message} (code ${error.code ?? "-"})`);
  process.exit(1);
});
