// A small radiograph viewer on a canvas: window / level by left drag, zoom by wheel
// or keys, pan by shift- (or right-) drag, invert. The image is 8-bit gray; the
// window maps [level - width/2, level + width/2] linearly onto black..white.
(function () {
  "use strict";

  function Viewer(canvas, onChange) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onChange = onChange || function () {};
    this.src = null;          // Uint8ClampedArray of gray values
    this.off = document.createElement("canvas");
    this.reset();
    this._bind();
    var self = this;
    window.addEventListener("resize", function () { self.draw(); });
  }

  Viewer.prototype.reset = function () {
    this.width = 255; this.level = 128; this.inverted = false;
    this.zoom = 1; this.panX = 0; this.panY = 0;
    if (this.src) { this.render(); }
  };

  Viewer.prototype.load = function (url) {
    var self = this;
    return new Promise(function (resolve, reject) {
      var img = new Image();
      img.onload = function () {
        self.off.width = img.naturalWidth; self.off.height = img.naturalHeight;
        var octx = self.off.getContext("2d");
        octx.drawImage(img, 0, 0);
        var rgba = octx.getImageData(0, 0, img.naturalWidth, img.naturalHeight).data;
        self.src = new Uint8ClampedArray(rgba.length / 4);
        for (var i = 0, j = 0; i < rgba.length; i += 4, j++) { self.src[j] = rgba[i]; }
        self.imageData = octx.createImageData(img.naturalWidth, img.naturalHeight);
        self.reset();
        resolve();
      };
      img.onerror = function () { reject(new Error("image did not load")); };
      img.src = url;
    });
  };

  Viewer.prototype.render = function () {
    // Apply window / level / invert through a 256-entry lookup table.
    var lut = new Uint8ClampedArray(256), lo = this.level - this.width / 2, w = Math.max(1, this.width);
    for (var v = 0; v < 256; v++) {
      var out = Math.round(Math.min(255, Math.max(0, (v - lo) / w * 255)));
      lut[v] = this.inverted ? 255 - out : out;
    }
    var d = this.imageData.data, s = this.src;
    for (var i = 0, j = 0; j < s.length; i += 4, j++) {
      var g = lut[s[j]]; d[i] = g; d[i + 1] = g; d[i + 2] = g; d[i + 3] = 255;
    }
    this.off.getContext("2d").putImageData(this.imageData, 0, 0);
    this.draw();
  };

  Viewer.prototype.draw = function () {
    var c = this.canvas, rect = c.getBoundingClientRect();
    var dpr = window.devicePixelRatio || 1;
    c.width = Math.max(1, Math.round(rect.width * dpr)); c.height = Math.max(1, Math.round(rect.height * dpr));
    var ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, c.width, c.height);
    if (!this.src) { return; }
    var fit = Math.min(c.width / this.off.width, c.height / this.off.height) * this.zoom;
    var x = (c.width - this.off.width * fit) / 2 + this.panX * dpr;
    var y = (c.height - this.off.height * fit) / 2 + this.panY * dpr;
    ctx.imageSmoothingEnabled = this.zoom < 2;
    ctx.drawImage(this.off, x, y, this.off.width * fit, this.off.height * fit);
    this.onChange(this);
  };

  Viewer.prototype.setWindow = function (width, level) {
    this.width = Math.min(512, Math.max(1, Math.round(width)));
    this.level = Math.min(255, Math.max(0, Math.round(level)));
    this.render();
  };

  Viewer.prototype.zoomBy = function (factor, cx, cy) {
    var z = Math.min(16, Math.max(0.25, this.zoom * factor));
    var rect = this.canvas.getBoundingClientRect();
    if (cx !== undefined) {  // keep the point under the cursor in place
      var dx = cx - rect.width / 2 - this.panX, dy = cy - rect.height / 2 - this.panY;
      this.panX -= dx * (z / this.zoom - 1); this.panY -= dy * (z / this.zoom - 1);
    }
    this.zoom = z;
    this.draw();
  };

  Viewer.prototype.invert = function () { this.inverted = !this.inverted; this.render(); };

  Viewer.prototype._bind = function () {
    var self = this, c = this.canvas, drag = null;
    c.addEventListener("contextmenu", function (e) { e.preventDefault(); });
    c.addEventListener("mousedown", function (e) {
      e.preventDefault();
      drag = {x: e.clientX, y: e.clientY, w: self.width, l: self.level, px: self.panX, py: self.panY,
              pan: e.shiftKey || e.button !== 0};
    });
    window.addEventListener("mousemove", function (e) {
      if (!drag || !self.src) { return; }
      var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (drag.pan) { self.panX = drag.px + dx; self.panY = drag.py + dy; self.draw(); }
      else { self.setWindow(drag.w + dx, drag.l + dy); }  // right: wider window; up: lower level = brighter
    });
    window.addEventListener("mouseup", function () { drag = null; });
    c.addEventListener("wheel", function (e) {
      e.preventDefault();
      var r = c.getBoundingClientRect();
      self.zoomBy(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - r.left, e.clientY - r.top);
    }, {passive: false});
    c.addEventListener("dblclick", function () { self.reset(); });
  };

  window.ReaderViewer = Viewer;
})();
