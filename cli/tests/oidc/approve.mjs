// Plays the human in the device flow against provider.mjs:
//
//   node approve.mjs VERIFICATION_URI_COMPLETE LOGIN
//
// Opens the verification page, confirms the user code, signs in on the
// development login page as LOGIN (any password), clicks through a consent
// page if one shows, and stops at the "Sign-in Success" page.
// Exits 0 on success; otherwise prints why on stderr and exits 1.
const [url, login] = process.argv.slice(2);
if (!url || !login) {
  console.error('usage: node approve.mjs VERIFICATION_URI_COMPLETE LOGIN');
  process.exit(2);
}

function fail(message, body) {
  console.error(`approve: ${message}`);
  // The page's visible text is enough to tell why (e.g. "The code you entered is incorrect").
  if (body) {
    const text = body.replace(/<(style|script)\b[\s\S]*?<\/\1>/gi, '').replace(/<[^>]*>/g, ' ');
    console.error(`approve: page says: ${text.replace(/\s+/g, ' ').trim().slice(0, 500)}`);
  }
  process.exit(1);
}

// A tiny cookie jar honouring Path and deletion; the provider's cookies are
// path-scoped (e.g. /interaction/<uid>), so sending them everywhere would be wrong.
const jar = new Map(); // `${name};${path}` -> { name, value, path }
function storeCookies(res, requestUrl) {
  for (const line of res.headers.getSetCookie()) {
    const [pair, ...attrs] = line.split(';').map((s) => s.trim());
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    let path = '/';
    let expired = false;
    for (const attr of attrs) {
      const [k, v = ''] = attr.split('=');
      const key = k.toLowerCase();
      if (key === 'path') path = v;
      if (key === 'max-age' && Number(v) <= 0) expired = true;
      if (key === 'expires' && Date.parse(v) <= Date.now()) expired = true;
    }
    const id = `${name};${path}`;
    if (expired) jar.delete(id); else jar.set(id, { name, value, path });
  }
}
function cookieHeader(requestUrl) {
  const { pathname } = new URL(requestUrl);
  return [...jar.values()]
    .filter((c) => pathname === c.path || pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`))
    .map((c) => `${c.name}=${c.value}`)
    .join('; ');
}

// One request plus redirects (followed by hand, to keep cookies); returns the final page.
async function browse(method, target, form) {
  let current = new URL(target);
  let init = { method, body: form ? new URLSearchParams(form) : undefined };
  for (let hops = 0; hops < 20; hops += 1) {
    const headers = { cookie: cookieHeader(current) };
    if (init.body) headers['content-type'] = 'application/x-www-form-urlencoded';
    const res = await fetch(current, { ...init, headers, redirect: 'manual' })
      .catch((err) => fail(`cannot reach ${current.origin}: ${err.cause?.code ?? err.message}`));
    storeCookies(res, current);
    if (res.status >= 300 && res.status < 400) {
      current = new URL(res.headers.get('location'), current);
      init = { method: 'GET' }; // 302/303 after a POST become GETs, as in a browser
      continue;
    }
    return { status: res.status, url: current, body: await res.text() };
  }
  return fail(`too many redirects at ${current}`);
}

const decode = (s) => s.replace(/&quot;/g, '"').replace(/&#39;|&#x27;/g, "'")
  .replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
const attr = (tag, name) => {
  const m = tag.match(new RegExp(`\\s${name}="([^"]*)"`, 'i'));
  return m ? decode(m[1]) : undefined;
};

// The first POST form of a page: its action and its <input> fields.
// <button>s are left out on purpose (the device page's only named button is "abort").
function parseForm(page) {
  const m = page.body.match(/<form\b([^>]*)>([\s\S]*?)<\/form>/i);
  if (!m) return undefined;
  const fields = {};
  for (const [tag] of m[2].matchAll(/<input\b[^>]*>/gi)) {
    const name = attr(tag, 'name');
    if (name) fields[name] = attr(tag, 'value') ?? '';
  }
  return { action: new URL(attr(m[1], 'action') || page.url.href, page.url), fields };
}

let page = await browse('GET', url);
for (let step = 0; step < 10; step += 1) {
  if (/Sign-in Success/.test(page.body)) {
    console.log(`approve: signed in as ${login}`);
    process.exit(0);
  }
  if (page.status >= 400 || /class="red"/.test(page.body)) {
    fail(`the provider refused at ${page.url.pathname} (HTTP ${page.status})`, page.body);
  }
  const form = parseForm(page);
  if (!form) fail(`no form to submit at ${page.url.pathname}`, page.body);
  if ('login' in form.fields) { // the development login page
    form.fields.login = login;
    form.fields.password = 'anything';
  }
  page = await browse('POST', form.action, form.fields);
}
fail('did not reach the success page after 10 forms', page.body);
