// Native codec shortcuts for the message tests: decode a map packed by hand
// (as a peer could send it, valid or not), and round-trip a message.

import { createNativePackr, createNativeUnpackr, decodeNative, encodeNative, type NativeMessage } from '../../src/wire/native.js';

/** `value` packed as msgpack, with no validation (what any peer could send). */
export const packRaw = (value: unknown): Buffer => createNativePackr().pack(value) as Buffer;

/** `value`, packed by hand, as the codec decodes it (or throws). */
export const decode = (value: unknown): NativeMessage => decodeNative(packRaw(value), createNativeUnpackr());

/** `msg` encoded and decoded again. */
export const roundTrip = (msg: NativeMessage): NativeMessage => decodeNative(encodeNative(msg, createNativePackr()), createNativeUnpackr());
