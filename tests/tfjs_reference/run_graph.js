#!/usr/bin/env node
// Runs a TF.js graph model with TensorFlow.js itself (pure JS, CPU backend): the reference that
// anonymize/models/tfjs is compared against in the tests. Driven by tests/tfjs_node.py.
//
//   node run_graph.js MODEL.json REQUEST.json
//
// REQUEST.json:
//   {"inputs":  {"<node name>": {"shape": [2, 112, 112, 3], "dtype": "float32", "file": "/abs/in0.bin"}},
//    "outputs": ["<node name>", "<node name>:1", ...],
//    "out_dir": "/abs/dir"}
// Input and output names are graph node names, with or without ":<index>" (signature keys work too).
// Input files hold the raw little-endian values (float32 or int32). For the i-th requested output it
// writes out_dir/<i>.bin (raw little-endian, in the tensor's dtype) and, last, out_dir/outputs.json:
//   {"outputs": [{"name": ..., "shape": [...], "dtype": "float32", "file": "<i>.bin"}, ...]}
// Nothing is written to stdout; any failure: a message on stderr and exit code 1.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const tf = require('@tensorflow/tfjs');

const ARRAYS = {float32: Float32Array, int32: Int32Array, bool: Uint8Array};

function bytesOf(buffer) {
  return buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
}

/** The model's artifacts as tf.io.fromMemory wants them: the json's fields plus one weights buffer. */
function readArtifacts(modelJson) {
  const json = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const folder = path.dirname(modelJson);
  const {weightsManifest, ...rest} = json;
  const groups = weightsManifest || [];
  const shards = groups.flatMap((group) => group.paths.map((p) => fs.readFileSync(path.join(folder, p))));
  return {
    ...rest,
    weightSpecs: groups.flatMap((group) => group.weights),
    weightData: bytesOf(Buffer.concat(shards)),
  };
}

function readInput(name, spec) {
  const TypedArray = ARRAYS[spec.dtype || 'float32'];
  if (TypedArray === undefined || spec.dtype === 'bool') throw new Error(`input ${name}: unsupported dtype ${spec.dtype}`);
  const values = new TypedArray(bytesOf(fs.readFileSync(spec.file)));
  return tf.tensor(values, spec.shape, spec.dtype || 'float32');
}

async function main(argv) {
  if (argv.length !== 2) throw new Error('usage: node run_graph.js MODEL.json REQUEST.json');
  if (os.endianness() !== 'LE') throw new Error('this protocol assumes a little-endian host');
  const [modelJson, requestJson] = argv;
  const request = JSON.parse(fs.readFileSync(requestJson, 'utf8'));

  // Prod mode keeps TF.js quiet (no "install tfjs-node" banner); only the CPU backend may ever run.
  tf.enableProdMode();
  for (const name of Object.keys(tf.engine().registryFactory)) {
    if (name !== 'cpu') tf.removeBackend(name);
  }
  if (!(await tf.setBackend('cpu')) || tf.getBackend() !== 'cpu') throw new Error('the TF.js CPU backend did not start');

  const model = await tf.loadGraphModel(tf.io.fromMemory(readArtifacts(modelJson)));
  const inputs = {};
  for (const [name, spec] of Object.entries(request.inputs)) inputs[name] = readInput(name, spec);
  let outputs = model.execute(inputs, request.outputs);
  if (!Array.isArray(outputs)) outputs = [outputs];

  fs.mkdirSync(request.out_dir, {recursive: true});
  const written = [];
  for (const [i, tensor] of outputs.entries()) {
    const file = `${i}.bin`;
    const values = tensor.dataSync();
    fs.writeFileSync(path.join(request.out_dir, file), Buffer.from(values.buffer, values.byteOffset, values.byteLength));
    written.push({name: request.outputs[i], shape: tensor.shape, dtype: tensor.dtype, file});
  }
  fs.writeFileSync(path.join(request.out_dir, 'outputs.json'), JSON.stringify({outputs: written}));
}

main(process.argv.slice(2)).catch((error) => {
  process.stderr.write(`run_graph.js: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
