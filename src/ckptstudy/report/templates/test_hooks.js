(function(){
  var errors=[];
  function note(){document.body.setAttribute('data-errors', JSON.stringify(errors));}
  window.addEventListener('error', function(e){
    var t=e.target;
    errors.push(t && t.tagName ? ('resource: '+t.tagName+' '+(t.alt||'')) : ('script: '+e.message)); note();
  }, true);
  var original=console.error;
  console.error=function(){
    errors.push('console: '+Array.prototype.join.call(arguments,' ')); note(); original.apply(console, arguments);
  };
  function decoded(img){
    if(!(img.complete && img.naturalWidth>0)) return false;
    var c=document.createElement('canvas'); c.width=img.naturalWidth; c.height=img.naturalHeight;
    var g=c.getContext('2d'); g.drawImage(img,0,0);
    var row=g.getImageData(0,c.height-1,c.width,1).data;  // a truncated PNG leaves its last rows transparent
    for(var k=3;k<row.length;k+=4){ if(row[k]===0) return false; }
    return true;
  }
  window.addEventListener('load', function(){
    var imgs=document.images, bad=[];
    for(var i=0;i<imgs.length;i++){ if(!decoded(imgs[i])) bad.push(imgs[i].alt); }
    document.body.setAttribute('data-images', String(imgs.length));
    document.body.setAttribute('data-undecoded', JSON.stringify(bad));
    // the first screen: where the claims table's first verdict row ends, against the window's height
    var claims=document.querySelector('table.claims');
    if(claims && claims.rows.length>1){
      document.body.setAttribute('data-claimsrow', String(Math.round(claims.rows[1].getBoundingClientRect().bottom)));
    }
    document.body.setAttribute('data-viewport', String(window.innerHeight));
    note();
    document.body.setAttribute('data-checked', 'yes');
  });
})();
