// Verify, in this browser and with nothing but WebCrypto, what the proof page shows: the
// checkpoint's Ed25519 signature (C2SP signed note) by the log key, the leaf hash of the
// leaf's data, and the RFC 6962 / RFC 9162 inclusion path from that leaf to the root the
// checkpoint signs. The page's text is the input: change a byte of it and the verdict changes.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const enc = new TextEncoder();
  const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
  const unhex = (s) => {
    if (!/^([0-9a-f]{2})*$/.test(s)) throw new Error("not hex: " + s.slice(0, 16));
    return new Uint8Array(s.match(/../g) ? s.match(/../g).map((x) => parseInt(x, 16)) : []);
  };
  const unb64 = (s) => Uint8Array.from(atob(s.trim()), (c) => c.charCodeAt(0));
  const cat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  };
  const sha256 = async (b) => new Uint8Array(await crypto.subtle.digest("SHA-256", b));
  const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

  async function checkSignature(note, vkey) {
    const cut = note.indexOf("\n\n");
    if (cut < 0) throw new Error("the checkpoint has no signature block");
    const text = note.slice(0, cut + 1);
    const plus = vkey.indexOf("+"), plus2 = vkey.indexOf("+", plus + 1);  // base64 may hold '+'
    if (plus < 1 || plus2 < 0) throw new Error("the log key is not a vkey");
    const name = vkey.slice(0, plus), keyHash = vkey.slice(plus + 1, plus2), keyB64 = vkey.slice(plus2 + 1);
    const key = unb64(keyB64);
    if (key.length !== 33 || key[0] !== 1) throw new Error("the log key is not an Ed25519 vkey");
    const pub = key.slice(1);
    const want = (await sha256(cat(enc.encode(name + "\n"), new Uint8Array([1]), pub))).slice(0, 4);
    if (hex(want) !== keyHash) throw new Error("the log key's hash does not match the key");
    const lines = note.slice(cut + 2).split("\n").filter((l) => l.startsWith("\u2014 " + name + " "));
    if (!lines.length) throw new Error("no signature by " + name);
    const cryptoKey = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
    for (const line of lines) {
      const sig = unb64(line.slice(("\u2014 " + name + " ").length));
      if (!same(sig.slice(0, 4), want)) continue;  // another key of the same name
      if (!await crypto.subtle.verify({ name: "Ed25519" }, cryptoKey, sig.slice(4), enc.encode(text))) {
        throw new Error("the checkpoint's signature does not verify");
      }
      const [origin, size, root] = text.split("\n");
      if (origin !== name) throw new Error("the checkpoint's origin is not the key's name");
      return { size: Number(size), root: unb64(root) };
    }
    throw new Error("no signature by the log key's hash");
  }

  async function rootFromPath(index, size, leaf, path) {
    // RFC 9162 section 2.1.3.2
    if (index >= size) throw new Error("leaf index beyond the tree");
    let fn = index, sn = size - 1, r = leaf;
    for (const p of path) {
      if (sn === 0) throw new Error("the path is too long");
      if (fn % 2 === 1 || fn === sn) {
        r = await sha256(cat(new Uint8Array([1]), p, r));
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
        }
      } else {
        r = await sha256(cat(new Uint8Array([1]), r, p));
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    if (sn !== 0) throw new Error("the path is too short");
    return r;
  }

  async function verify() {
    const verdict = $("verdict"), checks = $("checks");
    verdict.textContent = "checking…";
    checks.textContent = "";
    const say = (ok, what) => {
      const li = document.createElement("li");
      li.textContent = (ok ? "✔ " : "✘ ") + what;
      li.className = ok ? "good" : "bad";
      checks.appendChild(li);
    };
    try {
      const signed = await checkSignature($("checkpoint").textContent, $("vkey").textContent.trim());
      say(true, "checkpoint signed by the log key (Ed25519): size " + signed.size + ", root " + hex(signed.root));
      const list = $("path");
      const index = Number(list.dataset.index), size = Number(list.dataset.size);
      if (size !== signed.size) throw new Error("the proof is for size " + size + ", the checkpoint signs " + signed.size);
      const data = unb64($("leaf-data").textContent);
      const leaf = await sha256(cat(new Uint8Array([0]), data));
      if (hex(leaf) !== $("leaf-hash").textContent.trim()) throw new Error("the leaf's data does not hash to the leaf hash shown");
      say(true, "leaf hash = SHA-256(0x00 || data) = " + hex(leaf));
      const path = Array.from(list.querySelectorAll("li:not(.muted)"), (li) => unhex(li.textContent.trim()));
      if (path.some((p) => p.length !== 32)) throw new Error("a path hash is not 32 bytes");
      const root = await rootFromPath(index, size, leaf, path);
      if (!same(root, signed.root)) throw new Error("the inclusion path leads to " + hex(root) + ", not to the signed root");
      say(true, "leaf " + index + " is in the signed tree (" + path.length + " hashes to the root)");
      verdict.textContent = "valid";
      verdict.className = "good";
    } catch (e) {
      say(false, e.message);
      verdict.textContent = "invalid";
      verdict.className = "bad";
    }
  }

  const button = $("verify");
  if (!button || !$("path")) return;
  button.addEventListener("click", verify);
  if (!(window.crypto && crypto.subtle)) {
    $("verdict").textContent = "this browser has no WebCrypto here; run immctl ledger verify instead";
    return;
  }
  verify();
})();
