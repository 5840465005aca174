const {buildApp}=require('./dist/src/app');
const orig=require('express').application.listen;
const {startServer}=require('./dist/src/main');const {loadConfig}=require('./dist/src/config');const {createLogger}=require('./dist/src/logger');
const express=require('express');
const origUse=express.application.use;
let app;
express.application.use=function(...a){app=this;return origUse.apply(this,a)};
startServer({...loadConfig({HOST:'127.0.0.1',PORT:'0'}),dataDir:'/tmp/stk',authRequired:false},createLogger('error',true)).then(async s=>{
  console.log(app._router.stack.map(l=>l.name+(l.route?':'+l.route.path:'')+(l.regexp&&l.name==='router'?' '+String(l.regexp).slice(0,40):'')).join('\n'));
  await s.stop();
});
